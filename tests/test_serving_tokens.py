"""The server tokenizes each input once: its ids must be exactly the engine's, cut or not."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from qrerank import AsyncEngine, Embedder, EmbedRequest, Reranker, ScoreRequest, Tokenized
from qrerank.serving.tokens import InputTooLong, TokenCounter

LONG = "a long document that goes on " * 80


def test_reranker_ids_equal_the_engines_including_the_cut(reranker: Reranker) -> None:
    counter = TokenCounter(reranker)
    docs = ["short", LONG, "", LONG[:700]]
    request = ScoreRequest("q", docs, "Judge")
    tokenized = counter.score_tokens(request, truncate=True, field="documents")
    assert list(tokenized.ids) == reranker.encode(request) and tokenized.owners is None
    assert max(map(len, tokenized.ids)) == 256  # one was cut, to exactly max_length
    with pytest.raises(InputTooLong, match=r"documents\[1\] is longer than the model's limit of 256 tokens"):
        counter.score_tokens(ScoreRequest("q", docs), truncate=False, field="documents")
    with pytest.raises(InputTooLong, match=r"documents\[7\] is longer"):  # named by its place in the whole body
        counter.score_tokens(ScoreRequest("q", docs), truncate=False, field="documents", positions=[3, 7, 8, 9])


def test_a_chunked_document_is_never_too_long(reranker: Reranker) -> None:
    counter = TokenCounter(reranker)
    request = ScoreRequest("q", ["short", LONG * 3], max_chunks_per_doc=4)
    tokenized = counter.score_tokens(request, truncate=False, field="documents")
    assert tokenized.items == 2 and len(tokenized.ids) == 1 + 4 and list(tokenized.owners) == [0, 1, 1, 1, 1]
    assert tokenized.ids == reranker.tokenize(request).ids
    capped = ScoreRequest("q", [LONG], max_tokens_per_doc=100)  # cut to 100 own tokens first: it fits
    assert len(counter.score_tokens(capped, truncate=False, field="documents").ids[0]) < 256


def test_embedder_ids_equal_the_engines_including_the_cut(embedder: Embedder) -> None:
    counter = TokenCounter(embedder)
    texts = [LONG, "short", "", LONG[:800]]
    request = EmbedRequest(texts, "Find it")
    tokenized = counter.embed_tokens(request, truncate=True, field="input")
    assert list(tokenized.ids) == embedder.encode(request)
    assert max(map(len, tokenized.ids)) == 256
    with pytest.raises(InputTooLong, match=r"input\[0\] is longer"):
        counter.embed_tokens(EmbedRequest(texts), truncate=False, field="input")
    with pytest.raises(InputTooLong, match=r"input\[4\] is longer"):
        counter.embed_tokens(EmbedRequest(texts), truncate=False, field="input", positions=[4, 5, 6, 7])


def test_async_engine_uses_and_checks_the_callers_tokens(reranker: Reranker) -> None:
    docs = ["short", "another document"]
    ids = reranker.encode(ScoreRequest("q", docs))

    async def main() -> tuple[np.ndarray, Exception]:
        async with AsyncEngine(reranker, max_wait_ms=0) as engine:
            scores = await engine.score("q", docs, tokenized=Tokenized(ids))
            try:
                await engine.score("q", docs, tokenized=Tokenized(ids[:1]))
            except ValueError as err:
                return scores, err
        raise AssertionError("mismatched token ids were accepted")

    scores, error = asyncio.run(main())
    np.testing.assert_allclose(scores, reranker.score("q", docs), rtol=0, atol=1e-6)
    assert "has 1 items for the request's 2 inputs" in str(error)
