"""The exact recipe token ids of each input: for `usage`, the per-input token limit, and the engine itself.

The limit is the engine's `max_length`: the longest input the recipe keeps whole. The model's own
prompt encodes each input (reading only as much text as max_length can use, `qrerank.bounded`) and
says which inputs it had to cut; those are refused unless the request asks for truncation, and
otherwise go on cut exactly as the engine would cut them. A chunked document (`max_chunks_per_doc`)
is never too long: its windows go on instead. So each input is tokenized once, here, off the device
thread, and the ids go on to the engine (`score_batch(tokenized=...)`).
"""

from __future__ import annotations

from collections.abc import Sequence

from qrerank.embedder import Embedder
from qrerank.prompts import EmbeddingPrompt, Encoded, RerankerPrompt
from qrerank.requests import EmbedRequest, ScoreRequest, Tokenized
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
        self._prompt = model.prompt

    def score_tokens(
        self, request: ScoreRequest, truncate: bool, field: str, positions: Sequence[int] | None = None
    ) -> Tokenized:
        """The sequences of `request`'s documents; `positions[i]`: the index naming document i in a 413."""
        prompt = self._prompt
        assert isinstance(prompt, RerankerPrompt)
        encoded = prompt.tokenize(
            request.query, request.docs, request.instruction, request.max_chunks_per_doc, request.max_tokens_per_doc
        )
        return self._checked(encoded, truncate, field, positions)

    def embed_tokens(
        self, request: EmbedRequest, truncate: bool, field: str, positions: Sequence[int] | None = None
    ) -> Tokenized:
        """The sequence of each of `request`'s texts; `positions[i]`: the index naming text i in a 413."""
        prompt = self._prompt
        assert isinstance(prompt, EmbeddingPrompt)
        encoded = prompt.tokenize(request.texts, request.instruction, request.prompt)
        return self._checked(encoded, truncate, field, positions)

    def _checked(self, encoded: Encoded, truncate: bool, field: str, positions: Sequence[int] | None) -> Tokenized:
        if not truncate and any(encoded.cut):
            first = encoded.cut.index(True)
            raise InputTooLong(field, first if positions is None else positions[first], self.max_length)
        return encoded.tokenized
