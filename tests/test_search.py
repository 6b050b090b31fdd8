"""qrerank.search end to end with the tiny random embedder and reranker, against the same two stages by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from qrerank import Embedder, Reranker
from qrerank.index import DEFAULT_TASK, Index
from qrerank.retrieve import search

CORPUS = [
    "Tokyo is the capital of Japan.",
    "Bananas are yellow and rich in potassium.",
    "Kyoto was the capital of Japan until 1868.",
    "The with statement manages a context.",
    "Python's sorted() returns a new list.",
    "Mount Fuji is the highest mountain in Japan.",
    "Gravity attracts bodies with mass.",
    "",
]


def by_hand(
    query: str, embedder: Embedder, reranker: Reranker, candidates: int, top_k: int, instruction: str | None
) -> list[dict[str, Any]]:
    """The README's two stages: cosine similarity (stable order), then the reranker on the candidates."""
    corpus_vectors = embedder.embed(CORPUS)
    q = embedder.embed([query], instruction=DEFAULT_TASK if instruction is None else instruction)[0]
    similarity = corpus_vectors @ q
    found = np.argsort(-similarity, kind="stable")[:candidates]
    ranked = reranker.rank(query, [CORPUS[i] for i in found], top_k=top_k, instruction=instruction)
    return [
        {"index": int(found[r["index"]]), "score": r["score"], "similarity": float(similarity[found[r["index"]]])}
        for r in ranked
    ]


def assert_same(results: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [r["index"] for r in results] == [e["index"] for e in expected]
    np.testing.assert_allclose([r["score"] for r in results], [e["score"] for e in expected], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        [r["similarity"] for r in results], [e["similarity"] for e in expected], rtol=0, atol=1e-5
    )
    assert [r["document"] for r in results] == [CORPUS[e["index"]] for e in expected]


@pytest.mark.parametrize(("candidates", "top_k", "instruction"), [(5, 3, None), (50, 10, "Find facts about Japan")])
def test_matches_the_two_stages_by_hand(
    embedder: Embedder, reranker: Reranker, candidates: int, top_k: int, instruction: str | None
) -> None:
    query = "What is the capital of Japan?"
    results = search(
        query, CORPUS, embedder=embedder, reranker=reranker, candidates=candidates, top_k=top_k, instruction=instruction
    )
    assert len(results) == min(top_k, candidates, len(CORPUS))
    assert_same(results, by_hand(query, embedder, reranker, candidates, top_k, instruction))


def test_index_reused_across_calls_and_query_lists(embedder: Embedder, reranker: Reranker) -> None:
    index = Index(CORPUS, embedder=embedder)
    queries = ["capital of Japan", "how to sort in python"]
    together = search(queries, index, embedder=embedder, reranker=reranker, candidates=4, top_k=2)
    assert len(together) == 2
    for query, results in zip(queries, together):
        assert_same(results, by_hand(query, embedder, reranker, 4, 2, None))
        alone = search(query, index, embedder=embedder, reranker=reranker, candidates=4, top_k=2)
        assert_same(alone, results)  # batching the queries changes only the last bits


def test_index_from_vectors_with_texts(embedder: Embedder, reranker: Reranker) -> None:
    index = Index(torch.from_numpy(embedder.embed(CORPUS)), texts=CORPUS, device="cpu")
    results = search("mountains", index, embedder=embedder, reranker=reranker, candidates=3, top_k=3)
    assert_same(results, by_hand("mountains", embedder, reranker, 3, 3, None))


def test_empty_corpus_and_empty_query_list(embedder: Embedder, reranker: Reranker) -> None:
    assert search("q", [], embedder=embedder, reranker=reranker) == []
    assert search([], CORPUS, embedder=embedder, reranker=reranker) == []
    assert search(["a", "b"], Index(embedder=embedder), embedder=embedder, reranker=reranker) == [[], []]


def bad(**overrides: Any) -> Callable[[Embedder, Reranker], Any]:
    def call(embedder: Embedder, reranker: Reranker) -> Any:
        kwargs: dict[str, Any] = {"embedder": embedder, "reranker": reranker, **overrides}
        query, corpus = kwargs.pop("query", "q"), kwargs.pop("corpus", CORPUS)
        return search(query, corpus, **kwargs)

    return call


BAD_CALLS: list[Any] = [
    pytest.param(bad(candidates=0), ValueError, r"candidates must be between 1 and 1024, got 0", id="cand-0"),
    pytest.param(bad(candidates=1025), ValueError, r"candidates must be between 1 and 1024", id="cand-big"),
    pytest.param(bad(top_k=0), ValueError, r"top_k must be >= 1, got 0", id="top-k-0"),
    pytest.param(bad(top_k="3"), TypeError, r"top_k must be an int, got str", id="top-k-str"),
    pytest.param(bad(instruction=5), TypeError, r"instruction must be a str, got int", id="instruction"),
    pytest.param(bad(query=None), TypeError, r"query must be a list of str, got None", id="query-none"),
    pytest.param(bad(query=["a", 1]), TypeError, r"query\[1\] must be a str, got int", id="query-item"),
    pytest.param(bad(corpus="one text"), TypeError, r"corpus must be a list of str.*bare str", id="corpus-str"),
    pytest.param(bad(corpus=[b"bytes"]), TypeError, r"corpus\[0\] must be a str, got bytes", id="corpus-bytes"),
    pytest.param(bad(embedder=None), TypeError, r"embedder must be a qrerank.Embedder, got None", id="embedder"),
    pytest.param(bad(reranker="r"), TypeError, r"reranker must be a qrerank.Reranker, got str", id="reranker"),
    pytest.param(
        bad(corpus=Index(torch.ones(2, 64), device="cpu")), ValueError, r"Index has no texts to rerank", id="no-texts"
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_bad_input(
    embedder: Embedder, reranker: Reranker, call: Callable[..., Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call(embedder, reranker)
