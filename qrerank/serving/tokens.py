"""Token counts for `usage` and the per-input token limit: the exact recipe tokens of each input.

The limit is the engine's `max_length`: the longest input the recipe keeps whole. To tell an input
that fits from one the recipe would cut, inputs are encoded with the recipe at `max_length + 1`: an
input of more than `max_length` tokens comes out one token longer than any input that fits, and
every input that fits comes out exactly as the engine encodes it, so `usage` is exact too.

This encodes each request once more than the engine does (Reranker.score_batch / Embedder.embed_batch
tokenize their requests themselves); it runs on the caller's side, off the device thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from qrerank.embedder import Embedder
from qrerank.prompts import EmbeddingPrompt, RerankerPrompt
from qrerank.reranker import Reranker
from qrerank.serving.errors import ApiError


class InputTooLong(ApiError):
    def __init__(self, field: str, index: int, limit: int) -> None:
        super().__init__(
            413,
            f"{field}[{index}] is longer than the model's limit of {limit} tokens (prompt template included); "
            "shorten it, or ask for truncation (truncate=true on /embed and /rerank, or the server's --auto-truncate)",
        )


class TokenCounter:
    """Per-input token counts of one model's requests, as the engine will see them."""

    def __init__(self, model: Reranker | Embedder) -> None:
        self.max_length = model.engine.options.max_length
        tokenizer = model.prompt.tokenizer
        self._prompt = (
            RerankerPrompt(tokenizer, self.max_length + 1)
            if isinstance(model, Reranker)
            else EmbeddingPrompt(tokenizer, self.max_length + 1)
        )

    def score_tokens(
        self, queries: Sequence[str], docs: Sequence[str], instruction: str | None, truncate: bool, field: str
    ) -> list[int]:
        """Tokens of each (query, document) prompt; `queries` pairs with `docs` one to one."""
        assert isinstance(self._prompt, RerankerPrompt)
        lengths = [len(ids) for ids in self._prompt.encode(list(zip(queries, docs, strict=True)), instruction)]
        return self._checked(lengths, truncate, field)

    def embed_tokens(self, texts: Sequence[str], instruction: str | None, truncate: bool, field: str) -> list[int]:
        assert isinstance(self._prompt, EmbeddingPrompt)
        return self._checked([len(ids) for ids in self._prompt.encode(texts, instruction)], truncate, field)

    def _checked(self, lengths: list[int], truncate: bool, field: str) -> list[int]:
        if truncate:
            return [min(n, self.max_length) for n in lengths]
        for i, n in enumerate(lengths):
            if n > self.max_length:
                raise InputTooLong(field, i, self.max_length)
        return lengths
