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
    ids = counter.score_ids(["q"] * len(docs), docs, "Judge", truncate=True, field="documents")
    assert ids == reranker.encode(ScoreRequest("q", docs, "Judge"))
    assert max(map(len, ids)) == 256  # one was cut, to exactly max_length
    with pytest.raises(InputTooLong, match=r"documents\[1\] is longer than the model's limit of 256 tokens"):
        counter.score_ids(["q"] * len(docs), docs, None, truncate=False, field="documents")


def test_embedder_ids_equal_the_engines_including_the_cut(embedder: Embedder) -> None:
    counter = TokenCounter(embedder)
    texts = [LONG, "short", "", LONG[:800]]
    ids = counter.embed_ids(texts, "Find it", truncate=True, field="input")
    assert ids == embedder.encode(EmbedRequest(texts, "Find it"))
    assert max(map(len, ids)) == 256
    with pytest.raises(InputTooLong, match=r"input\[0\] is longer"):
        counter.embed_ids(texts, None, truncate=False, field="input")


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
