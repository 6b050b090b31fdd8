"""The HTTP server on a free loopback port: every route with real clients, results equal to the direct calls."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from qrerank import Embedder, Reranker  # noqa: E402
from qrerank.serving.app import create_app  # noqa: E402
from qrerank.serving.options import ServerOptions  # noqa: E402
from qrerank.serving.server import BackgroundServer  # noqa: E402

KEY = "test-key-3f9a"
RERANKER_NAME = "Qwen/Qwen3-Reranker-tiny"  # a slash, as hub ids have: /v1/inference/{model} must take it
EMBEDDER_NAME = "qwen3-embedding-tiny"
QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "", "France is in Europe, its capital is Paris."]


@pytest.fixture(scope="module")
def server(reranker: Reranker, embedder: Embedder) -> Iterator[BackgroundServer]:
    options = ServerOptions(reranker_name=RERANKER_NAME, embedder_name=EMBEDDER_NAME, api_keys=(KEY,))
    with BackgroundServer(create_app(reranker, embedder, options)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def test_health_needs_no_key_and_models_lists_the_served_names(server: BackgroundServer, client: httpx.Client) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["task"]) for m in models["data"]] == [(RERANKER_NAME, "rerank"), (EMBEDDER_NAME, "embed")]


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_openai_client_embeddings(server: BackgroundServer, embedder: Embedder, encoding_format: str | None) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    texts = ["how do I sort a list?", "Use sorted(xs).", ""]
    extra = {} if encoding_format is None else {"encoding_format": encoding_format}
    result = client.embeddings.create(model=EMBEDDER_NAME, input=texts, **extra)  # type: ignore[arg-type]
    assert result.model == EMBEDDER_NAME and [d.index for d in result.data] == [0, 1, 2]
    if encoding_format == "base64":  # asked for explicitly, the client hands the strings over undecoded
        got = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in result.data])
    else:
        got = np.array([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.embed(texts), rtol=0, atol=1e-6)
    lengths = [len(ids) for ids in embedder.prompt.encode(texts, None)]
    assert result.usage.prompt_tokens == result.usage.total_tokens == sum(lengths)


def test_openai_client_under_the_deepinfra_prefix_with_dimensions(server: BackgroundServer, embedder: Embedder) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1/openai", api_key=KEY, max_retries=0)
    result = client.embeddings.create(model=EMBEDDER_NAME, input="a single string", dimensions=32)
    assert len(result.data) == 1 and len(result.data[0].embedding) == 32
    np.testing.assert_allclose(result.data[0].embedding, embedder.embed("a single string", dim=32)[0], atol=1e-6)


def test_embeddings_base64_is_little_endian_float32(client: httpx.Client, embedder: Embedder) -> None:
    body = {"input": ["query text"], "encoding_format": "base64", "instruction": "Find the answer"}
    data = client.post("/v1/embeddings", json=body).json()["data"]
    got = np.frombuffer(base64.b64decode(data[0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(got, embedder.embed(["query text"], instruction="Find the answer")[0], atol=1e-6)


def test_cohere_jina_rerank(client: httpx.Client, reranker: Reranker) -> None:
    expected = reranker.rank(QUERY, DOCS, instruction="Find capitals")
    body = {
        "model": RERANKER_NAME,
        "query": QUERY,
        "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2], {"text": DOCS[3]}],
        "top_n": 3,
        "return_documents": True,
        "instruction": "Find capitals",
    }
    response = client.post("/v1/rerank", json=body).json()
    assert response["model"] == RERANKER_NAME
    assert [r["index"] for r in response["results"]] == [e["index"] for e in expected[:3]]
    for result, want in zip(response["results"], expected, strict=False):
        assert abs(result["relevance_score"] - want["score"]) <= 1e-6
        assert result["document"] == {"text": DOCS[result["index"]]}
    lengths = [len(ids) for ids in reranker.prompt.encode([(QUERY, d) for d in DOCS], "Find capitals")]
    assert response["usage"] == {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)}
    plain = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()["results"]
    assert len(plain) == len(DOCS) and all("document" not in r for r in plain)  # top_n defaults to all


def test_deepinfra_client_code_unchanged(server: BackgroundServer, reranker: Reranker) -> None:
    # The request code of a DeepInfra-style client, as such clients write it:
    url = f"{server.url}/v1/inference/{RERANKER_NAME}"
    payload = {"queries": [QUERY], "documents": DOCS, "instruction": "Find capitals"}
    response = requests.post(url, json=payload, headers={"Authorization": f"bearer {KEY}"}, timeout=30)
    response.raise_for_status()
    scores = response.json()["scores"]
    np.testing.assert_allclose(scores, reranker.score(QUERY, DOCS, instruction="Find capitals"), rtol=0, atol=1e-6)


def test_deepinfra_one_query_per_document(client: httpx.Client, reranker: Reranker) -> None:
    queries = ["capital of France?", "yellow fruit?", "capital of France?"]
    docs = ["Paris.", "Bananas.", "Bananas."]
    scores = client.post(f"/v1/inference/{RERANKER_NAME}", json={"queries": queries, "documents": docs}).json()
    np.testing.assert_allclose(scores["scores"], reranker.score_pairs(list(zip(queries, docs))), rtol=0, atol=1e-6)


def test_tei_embed(client: httpx.Client, embedder: Embedder) -> None:
    got = client.post("/embed", json={"inputs": ["one", "two"], "dimensions": 48, "normalize": False}).json()
    unnormalised = embedder.embed(["one", "two"], dim=48, normalize=False)
    np.testing.assert_allclose(got, unnormalised, rtol=0, atol=1e-5)  # raw states: a few ulps of batch variance
    single = client.post("/embed", json={"inputs": "one"}).json()
    np.testing.assert_allclose(single, embedder.embed("one"), rtol=0, atol=1e-6)


def test_tei_rerank_sorted_with_raw_scores_and_text(client: httpx.Client, reranker: Reranker) -> None:
    got = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True}).json()
    raw = reranker.score(QUERY, DOCS, raw=True)
    assert [r["index"] for r in got] == list(np.argsort(-raw, kind="stable"))
    for result in got:
        assert abs(result["score"] - raw[result["index"]]) <= 1e-5 and result["text"] == DOCS[result["index"]]


def test_truncation_is_asked_for_or_refused(client: httpx.Client, embedder: Embedder) -> None:
    long_text = "word " * 400  # over the fixture's max_length of 256 tokens
    refused = client.post("/embed", json={"inputs": ["short", long_text]})
    assert refused.status_code == 413 and "inputs[1]" in refused.json()["error"]["message"]
    cut = client.post("/embed", json={"inputs": ["short", long_text], "truncate": True})
    np.testing.assert_allclose(cut.json(), embedder.embed(["short", long_text]), rtol=0, atol=1e-6)


def test_metrics_count_requests_tokens_and_batches(client: httpx.Client) -> None:
    client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    client.post("/v1/rerank", json={"query": QUERY})  # a 422
    text = client.get("/metrics").text
    assert 'qrerank_requests_total{route="/v1/rerank",status="200"}' in text
    assert 'qrerank_errors_total{route="/v1/rerank",status="422"}' in text
    assert f'qrerank_prompt_tokens_total{{model="{RERANKER_NAME}"}}' in text
    for name in ("qrerank_batch_requests", "qrerank_batch_sequences", "qrerank_queue_seconds", "qrerank_batch_seconds"):
        assert f'{name}_count{{kind="score"}}' in text
    assert 'qrerank_request_seconds_bucket{le="0.001",route="/v1/rerank"}' in text
