"""A request body's engine work, made in one call on a worker thread: requests, their token ids, counts.

Constructing the library requests validates every text, and counting the recipe tokens tokenizes
them: both cost in proportion to the body, so neither runs on the event loop. Any ValueError or
TypeError of the library's validation is the client's input, answered 422; over-long inputs are 413.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from qrerank.embedder import Embedder
from qrerank.requests import EmbedRequest, ScoreRequest, Tokenized
from qrerank.serving.errors import ApiError
from qrerank.serving.tokens import InputTooLong, TokenCounter


@dataclass(frozen=True)
class ScoreWork:
    """One ScoreRequest per distinct query (its documents share a prompt prefix), with its token ids."""

    requests: list[tuple[ScoreRequest, Tokenized]]
    positions: list[list[int]]  # each request's documents' places in the body
    documents: int
    tokens: int

    def scores(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The requests' scores back in the body's order: float32 [documents]."""
        scores = np.empty(self.documents, dtype=np.float32)
        for idx, values in zip(self.positions, parts, strict=True):
            scores[idx] = values
        return scores


@dataclass(frozen=True)
class EmbedWork:
    request: EmbedRequest
    tokenized: Tokenized
    tokens: int


def score_work(
    counter: TokenCounter,
    queries: Sequence[str],
    docs: Sequence[str],
    instruction: str | None,
    truncate: bool,
    field: str,
    max_chunks_per_doc: int | None = None,
    max_tokens_per_doc: int | None = None,
) -> ScoreWork:
    """`queries` holds one query for all documents or one per document. `max_chunks_per_doc`: a long
    document's windows come back as several sequences of its item."""
    pairs = list(queries) * len(docs) if len(queries) == 1 else list(queries)
    by_query: dict[str, list[int]] = {}
    for i, query in enumerate(pairs):
        by_query.setdefault(query, []).append(i)
    long_documents = (max_chunks_per_doc, max_tokens_per_doc)
    with _input_errors():
        requests = [
            ScoreRequest(q, [docs[i] for i in idx], instruction, *long_documents) for q, idx in by_query.items()
        ]
        # positions: a 413 names the document's place in the body
        tokenized = [counter.score_tokens(r, truncate, field, idx) for r, idx in zip(requests, by_query.values())]
    work = list(zip(requests, tokenized, strict=True))
    return ScoreWork(work, list(by_query.values()), len(docs), sum(t.tokens for t in tokenized))


def embed_work(
    counter: TokenCounter,
    embedder: Embedder,
    texts: Sequence[str],
    *,
    instruction: str | None,
    prompt: str | None,
    dim: int | None,
    normalize: bool,
    truncate: bool,
    field: str,
    dim_field: str,
) -> EmbedWork:
    """`prompt`: a text put before each input (a sentence-transformers prompt)."""
    with _input_errors():
        request = EmbedRequest(texts, instruction, dim, normalize, prompt)
    _check_dim(embedder, request, dim_field)
    with _input_errors():
        tokenized = counter.embed_tokens(request, truncate, field)
    return EmbedWork(request, tokenized, tokenized.tokens)


def token_ids_work(
    embedder: Embedder, sequences: Sequence[Sequence[int]], dim: int | None, truncate: bool, field: str
) -> EmbedWork:
    """Texts given as token ids (OpenAI's list-of-ints input): each sequence checked against the vocabulary,
    cut as a text would be, then `<|endoftext|>` as for text; the texts are their decoding."""
    prompt = embedder.prompt
    vocab = min(prompt.tokenizer.get_vocab_size(with_added_tokens=True), embedder.engine.config.vocab_size)
    ids = []
    for i, seq in enumerate(sequences):
        if max(seq) >= vocab:
            raise ApiError(422, f"{field}[{i}] holds the token id {max(seq)}, outside the vocabulary [0, {vocab})")
        if len(seq) > prompt.text_budget:
            if not truncate:
                raise InputTooLong(field, i, embedder.engine.options.max_length)
            seq = seq[: prompt.text_budget]
        ids.append([*seq, prompt.eos_id])
    texts = prompt.tokenizer.decode_batch([seq[:-1] for seq in ids], skip_special_tokens=False)  # as cut
    with _input_errors():
        request = EmbedRequest(texts, None, dim)
    _check_dim(embedder, request, "dimensions")
    return EmbedWork(request, Tokenized(ids), sum(map(len, ids)))


def _check_dim(embedder: Embedder, request: EmbedRequest, field: str) -> None:
    try:
        embedder.check(request)
    except ValueError as err:
        raise ApiError(422, f"{field}: {err}") from None


@contextlib.contextmanager
def _input_errors() -> Iterator[None]:
    """The library's TypeError/ValueError about an input, as the client's 422."""
    try:
        yield
    except (TypeError, ValueError) as err:
        raise ApiError(422, f"invalid input: {err}") from None
