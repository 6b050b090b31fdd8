"""The exact recipe token ids of each input: for `usage`, the per-input token limit, and the engine itself.

The limit is the engine's `max_length`: the longest input the recipe keeps whole. To tell an input
that fits from one the recipe would cut, inputs are encoded with the recipe at `max_length + 1`: an
input of more than `max_length` tokens comes out one token longer than any input that fits, and
every input that fits comes out exactly as the engine encodes it. An input cut on request loses the
one extra body token, which gives the engine's own truncation. So each input is tokenized once, here,
off the device thread, and the ids go on to the engine (`score_batch(tokenized=...)`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    """Per-input token ids of one model's requests, exactly as the engine would make them."""

    def __init__(self, model: Reranker | Embedder) -> None:
        self.max_length = model.engine.options.max_length
        tokenizer = model.prompt.tokenizer
        self._prompt = (
            RerankerPrompt(tokenizer, self.max_length + 1)
            if isinstance(model, Reranker)
            else EmbeddingPrompt(tokenizer, self.max_length + 1)
        )

    def score_ids(
        self, queries: Sequence[str], docs: Sequence[str], instruction: str | None, truncate: bool, field: str
    ) -> list[list[int]]:
        """Token ids of each (query, document) prompt; `queries` pairs with `docs` one to one."""
        prompt = self._prompt
        assert isinstance(prompt, RerankerPrompt)
        ids = prompt.encode(list(zip(queries, docs, strict=True)), instruction)
        # prefix + body[:budget + 1] + suffix -> prefix + body[:budget] + suffix, as the engine cuts
        body_end = len(prompt.prefix_ids) + prompt.body_budget - 1
        return self._checked(ids, truncate, field, lambda seq: seq[:body_end] + prompt.suffix_ids)

    def embed_ids(self, texts: Sequence[str], instruction: str | None, truncate: bool, field: str) -> list[list[int]]:
        prompt = self._prompt
        assert isinstance(prompt, EmbeddingPrompt)
        # text[:budget + 1] + eos -> text[:budget] + eos, as the engine cuts
        cut = prompt.text_budget - 1
        return self._checked(
            prompt.encode(texts, instruction), truncate, field, lambda seq: [*seq[:cut], prompt.eos_id]
        )

    def _checked(
        self, ids: list[list[int]], truncate: bool, field: str, cut: Callable[[list[int]], list[int]]
    ) -> list[list[int]]:
        for i, seq in enumerate(ids):
            if len(seq) > self.max_length:
                if not truncate:
                    raise InputTooLong(field, i, self.max_length)
                ids[i] = cut(seq)
        return ids
