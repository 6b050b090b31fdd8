"""Cohere's long-document fields over HTTP: the server's token counter makes the windows, scores equal the library's."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from qrerank import Reranker, ScoreRequest  # noqa: E402
from qrerank.serving.app import create_app  # noqa: E402
from qrerank.serving.options import ServerOptions  # noqa: E402
from qrerank.serving.server import BackgroundServer  # noqa: E402

QUERY = "Where is the Eiffel tower?"
LONG = "Bananas are yellow. " * 80 + "The Eiffel tower stands in Paris. " + "Rivers flow to the sea. " * 80
DOCS = ["The tower is in Paris.", LONG, "Bananas are yellow."]


@pytest.fixture(scope="module")
def client(reranker: Reranker) -> Iterator[httpx.Client]:
    with BackgroundServer(create_app(reranker, None, ServerOptions(reranker_name="rr"))) as server:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            yield c


def _scores(answer: httpx.Response) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    return np.array([r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])], dtype=np.float32)


def test_max_chunks_per_doc_scores_windows_and_is_never_too_long(client: httpx.Client, reranker: Reranker) -> None:
    assert client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 413  # LONG is cut
    answer = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 3})
    np.testing.assert_allclose(_scores(answer), reranker.score(QUERY, DOCS, max_chunks_per_doc=3), rtol=0, atol=1e-6)
    windows = reranker.tokenize(ScoreRequest(QUERY, DOCS, max_chunks_per_doc=3))
    assert len(windows.ids) == 5 and answer.json()["usage"]["total_tokens"] == windows.tokens  # every window counted


def test_max_tokens_per_doc_cuts_each_document_first(client: httpx.Client, reranker: Reranker) -> None:
    answer = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 30})
    np.testing.assert_allclose(_scores(answer), reranker.score(QUERY, DOCS, max_tokens_per_doc=30), rtol=0, atol=1e-6)
