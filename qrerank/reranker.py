"""Reranker: Qwen3-Reranker relevance scores, sigmoid(h_last . (W_yes - W_no)) per (query, document) pair."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from qrerank.checkpoint import Checkpoint
from qrerank.engine import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_LENGTH, Engine, EngineOptions
from qrerank.prompts import RerankerPrompt
from qrerank.requests import ScoreRequest
from qrerank.validation import check_bool, check_int, check_optional_str, check_pairs


class Reranker:
    """A Qwen3-Reranker checkpoint (local directory or hub id) loaded on one device.

    Only the two LM-head rows of "yes" and "no" are loaded; a score costs one dot product.
    `backend`: "triton" (qrerank's kernels; the default on CUDA) or "torch" (reference ops; the
    default on CPU). `share_prefix`: run the token prefix common to one query's documents once.
    `cuda_graphs`: replay small batches from captured CUDA graphs (default: on with CUDA and triton).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        backend: str | None = None,
        share_prefix: bool = True,
        cuda_graphs: bool | None = None,
    ) -> None:
        options = EngineOptions.validate(
            device, dtype, max_length, max_batch_tokens, backend, share_prefix, cuda_graphs
        )
        ckpt = Checkpoint.open(model)
        self.prompt = RerankerPrompt(ckpt.tokenizer, options.max_length)
        self.engine = Engine(ckpt, options, head_token_ids=self.prompt.yes_no_ids)
        yes_row, no_row = self.engine.head_rows
        self._yes_minus_no = yes_row - no_row  # [H] fp32

    def __repr__(self) -> str:
        return f"Reranker({self.engine.describe()})"

    @property
    def device(self) -> torch.device:
        return self.engine.options.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.options.dtype

    def score(
        self, query: str, docs: Sequence[str], *, instruction: str | None = None, raw: bool = False
    ) -> np.ndarray:
        """Relevance of each document to `query`: float32 [len(docs)] in the docs' order.

        `raw=True` returns logit(yes) - logit(no) instead of the probability sigmoid of it.
        """
        return self.score_batch([ScoreRequest(query, docs, instruction)], raw=raw)[0]

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None, raw: bool = False
    ) -> np.ndarray:
        """Scores of independent (query, document) pairs: float32 [len(pairs)]."""
        pairs = check_pairs(pairs)
        check_optional_str(instruction, "instruction")
        by_query: dict[str, list[int]] = {}  # pairs of one query share a prompt prefix
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        requests = [ScoreRequest(q, [pairs[i][1] for i in idx], instruction) for q, idx in by_query.items()]
        scores = np.empty(len(pairs), dtype=np.float32)
        for idx, values in zip(by_query.values(), self.score_batch(requests, raw=raw)):
            scores[idx] = values
        return scores

    def encode(self, request: ScoreRequest, start: int = 0, end: int | None = None) -> list[list[int]]:
        """The official recipe's token ids of each (query, document) pair of `request` (documents start:end)."""
        return self.prompt.encode([(request.query, d) for d in request.docs[start:end]], request.instruction)

    def score_batch(
        self,
        requests: Sequence[ScoreRequest],
        *,
        raw: bool = False,
        token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[np.ndarray]:
        """Several requests in one engine pass (how a server merges concurrent callers): a float32 array each.

        `token_ids`: each request's ids exactly as `encode` gives them, from a caller that tokenized them
        already (a server counting tokens); they are checked against the requests and the model, not re-made.
        """
        check_bool(raw, "raw")
        for i, request in enumerate(requests):
            if not isinstance(request, ScoreRequest):
                raise TypeError(f"requests[{i}] must be a ScoreRequest, got {type(request).__name__}")
        if not requests:
            return []
        sizes = [len(r.docs) for r in requests]
        hidden = self.engine.run_requests(sizes, lambda i, a, b: self.encode(requests[i], a, b), token_ids)  # [N, H]
        logits = hidden @ self._yes_minus_no  # [N]
        scores = (logits if raw else torch.sigmoid(logits)).cpu().numpy()
        return np.split(scores, np.cumsum(sizes)[:-1])

    def rank(
        self,
        query: str,
        docs: Sequence[str],
        *,
        top_k: int | None = None,
        instruction: str | None = None,
        return_documents: bool = False,
    ) -> list[dict[str, Any]]:
        """Documents best first as {"index", "score"[, "document"]}; equal scores keep the docs' order."""
        if top_k is not None:
            check_int(top_k, "top_k", 1)
        check_bool(return_documents, "return_documents")
        scores = self.score(query, docs, instruction=instruction)
        order = np.argsort(-scores, kind="stable")[:top_k]
        results: list[dict[str, Any]] = [{"index": int(i), "score": float(scores[i])} for i in order]
        if return_documents:
            for result in results:
                result["document"] = docs[result["index"]]
        return results
