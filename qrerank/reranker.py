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
from qrerank.validation import check_bool, check_int, check_optional_str, check_pairs, check_str, check_str_list


class Reranker:
    """A Qwen3-Reranker checkpoint (local directory or hub id) loaded on one device.

    Only the two LM-head rows of "yes" and "no" are loaded; a score costs one dot product.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ) -> None:
        options = EngineOptions.validate(device, dtype, max_length, max_batch_tokens)
        ckpt = Checkpoint.open(model)
        self.prompt = RerankerPrompt(ckpt.tokenizer, options.max_length)
        self.engine = Engine(ckpt, options, head_token_ids=self.prompt.yes_no_ids)
        yes_row, no_row = self.engine.head_rows
        self._yes_minus_no = yes_row - no_row  # [H] fp32

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
        check_str(query, "query")
        docs = check_str_list(docs, "docs")
        return self._score([(query, d) for d in docs], instruction, raw)

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None, raw: bool = False
    ) -> np.ndarray:
        """Scores of independent (query, document) pairs: float32 [len(pairs)]."""
        return self._score(check_pairs(pairs), instruction, raw)

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

    def _score(self, pairs: list[tuple[str, str]], instruction: str | None, raw: bool) -> np.ndarray:
        check_optional_str(instruction, "instruction")
        check_bool(raw, "raw")
        if not pairs:
            return np.empty(0, dtype=np.float32)
        hidden = self.engine.run(self.prompt.encode(pairs, instruction))  # [N, H] fp32
        logits = hidden @ self._yes_minus_no  # [N]
        return (logits if raw else torch.sigmoid(logits)).cpu().numpy()
