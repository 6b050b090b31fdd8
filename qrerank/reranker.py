"""Reranker: Qwen3-Reranker relevance scores, sigmoid(h_last . (W_yes - W_no)) per (query, document) pair."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qrerank.checkpoint import Checkpoint, head_kind
from qrerank.engine import DEFAULT_MAX_BATCH_TOKENS, Engine, EngineOptions
from qrerank.prompts import SPECIAL_TOKENS, RerankerPrompt
from qrerank.requests import ScoreRequest, Tokenized
from qrerank.validation import check_bool, check_choice, check_int, check_optional_str, check_pairs


class Reranker:
    """A Qwen3-Reranker checkpoint (local directory or hub id) loaded on one device.

    Only the two LM-head rows of "yes" and "no" are loaded (or, for a Qwen3ForSequenceClassification
    conversion, its one score row, W_yes - W_no); a score costs one dot product. `max_length`: default
    min(8192, the model's max_position_embeddings).
    `backend`: "triton" (qrerank's kernels; the default on CUDA) or "torch" (reference ops; the
    default on CPU). `share_prefix`: run the token prefix common to one query's documents once.
    `cuda_graphs`: replay small batches from captured CUDA graphs (default: on with CUDA and triton).
    `warmup`: compile the kernels and capture the graphs at construction (default: on with CUDA), not
    during the first requests; `engine.warmup()` does it later.
    `special_tokens`: "parse" (the official recipe: `<|im_end|>` or `<think>` written in a query, document
    or instruction becomes that control token) or "plain" (user text is tokenized as ordinary text; the
    template keeps its own control tokens).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        backend: str | None = None,
        share_prefix: bool = True,
        cuda_graphs: bool | None = None,
        warmup: bool | None = None,
        special_tokens: str = "parse",
    ) -> None:
        options = EngineOptions.validate(
            device, dtype, max_length, max_batch_tokens, backend, share_prefix, cuda_graphs, warmup
        )
        check_choice(special_tokens, "special_tokens", SPECIAL_TOKENS)
        ckpt = Checkpoint.open(model)
        options = options.fit(ckpt.config)
        self.prompt = RerankerPrompt(ckpt.tokenizer, options.max_length, special_tokens)
        self.engine = Engine(ckpt, options, head_token_ids=self.prompt.yes_no_ids)
        rows = self.engine.head_rows  # LM head: the rows of "yes" and "no" [2, H]; seq-cls: its score row [1, H]
        self._yes_minus_no = rows[0] if head_kind(ckpt.config) == "score" else rows[0] - rows[1]  # [H] fp32

    def __repr__(self) -> str:
        return f"Reranker({self.engine.describe()})"

    @property
    def device(self) -> torch.device:
        return self.engine.options.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.options.dtype

    def score(
        self,
        query: str,
        docs: Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        max_chunks_per_doc: int | None = None,
        max_tokens_per_doc: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Relevance of each document to `query`: float32 [len(docs)] in the docs' order.

        `raw=True` returns logit(yes) - logit(no) instead of the probability sigmoid of it.
        `max_chunks_per_doc` / `max_tokens_per_doc`: long documents, as `ScoreRequest` describes them.
        """
        request = ScoreRequest(query, docs, instruction, max_chunks_per_doc, max_tokens_per_doc)
        return self.score_batch([request], raw=raw, show_progress=show_progress)[0]

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        instruction: str | None = None,
        raw: bool = False,
        max_chunks_per_doc: int | None = None,
        max_tokens_per_doc: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Scores of independent (query, document) pairs: float32 [len(pairs)]."""
        pairs = check_pairs(pairs)
        check_optional_str(instruction, "instruction")
        by_query: dict[str, list[int]] = {}  # pairs of one query share a prompt prefix
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        requests = [
            ScoreRequest(q, [pairs[i][1] for i in idx], instruction, max_chunks_per_doc, max_tokens_per_doc)
            for q, idx in by_query.items()
        ]
        scores = np.empty(len(pairs), dtype=np.float32)
        for idx, values in zip(by_query.values(), self.score_batch(requests, raw=raw, show_progress=show_progress)):
            scores[idx] = values
        return scores

    def encode(self, request: ScoreRequest, start: int = 0, end: int | None = None) -> list[list[int]]:
        """The official recipe's token ids of each (query, document) pair of `request` (documents start:end).

        One sequence per document: for a request with `max_chunks_per_doc`, `tokenize` gives its windows.
        """
        docs = request.docs[start:end]
        return list(
            self.prompt.tokenize(
                request.query, docs, request.instruction, None, request.max_tokens_per_doc
            ).tokenized.ids
        )

    def tokenize(self, request: ScoreRequest) -> Tokenized:
        """The sequences `score_batch` runs for `request` (for a caller that schedules them itself): one per
        document, or a chunked document's windows in a row (`owners`)."""
        return self.prompt.tokenize(
            request.query, request.docs, request.instruction, request.max_chunks_per_doc, request.max_tokens_per_doc
        ).tokenized

    def score_batch(
        self,
        requests: Sequence[ScoreRequest],
        *,
        raw: bool = False,
        tokenized: Sequence[Tokenized] | None = None,
        show_progress: bool = False,
    ) -> list[np.ndarray]:
        """Several requests in one engine pass (how a server merges concurrent callers): a float32 array each.

        `tokenized`: each request's sequences exactly as `tokenize` gives them (or any slice of items of
        them), from a caller that tokenized already (a server counting tokens); they are checked against
        the requests and the model, not re-made. A document's score is the maximum over its sequences.
        """
        check_bool(raw, "raw")
        check_bool(show_progress, "show_progress")
        for i, request in enumerate(requests):
            if not isinstance(request, ScoreRequest):
                raise TypeError(f"requests[{i}] must be a ScoreRequest, got {type(request).__name__}")
        if not requests:
            return []
        if tokenized is None and any(r.max_chunks_per_doc is not None for r in requests):
            tokenized = [self.tokenize(r) for r in requests]  # windows: several sequences per document
        sizes = [len(r.docs) for r in requests]
        total = sum(sizes) if tokenized is None else sum(len(t.ids) for t in tokenized if isinstance(t, Tokenized))
        with tqdm(total=total, unit="seq", disable=not show_progress) as progress:
            hidden = self.engine.run_requests(
                sizes, lambda i, a, b: self.encode(requests[i], a, b), tokenized, progress
            )  # [S, H]
        logits = (hidden @ self._yes_minus_no).cpu()  # [S]: one per sequence
        if tokenized is None:
            per_request = logits.split(sizes)
        else:
            counts = [len(t.ids) for t in tokenized]
            per_request = [t.per_item_max(x) for t, x in zip(tokenized, logits.split(counts), strict=True)]
        return [(x if raw else torch.sigmoid(x)).numpy() for x in per_request]

    def rank(
        self,
        query: str,
        docs: Sequence[str],
        *,
        top_k: int | None = None,
        instruction: str | None = None,
        return_documents: bool = False,
        max_chunks_per_doc: int | None = None,
        max_tokens_per_doc: int | None = None,
        show_progress: bool = False,
    ) -> list[dict[str, Any]]:
        """Documents best first as {"index", "score"[, "document"]}; equal scores keep the docs' order."""
        if top_k is not None:
            check_int(top_k, "top_k", 1)
        check_bool(return_documents, "return_documents")
        scores = self.score(
            query,
            docs,
            instruction=instruction,
            max_chunks_per_doc=max_chunks_per_doc,
            max_tokens_per_doc=max_tokens_per_doc,
            show_progress=show_progress,
        )
        order = np.argsort(-scores, kind="stable")[:top_k]
        results: list[dict[str, Any]] = [{"index": int(i), "score": float(scores[i])} for i in order]
        if return_documents:
            for result in results:
                result["document"] = docs[result["index"]]
        return results
