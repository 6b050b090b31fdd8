"""Bad requests: each gets its documented 4xx and the JSON error shape, never a 500; the server stays healthy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from qrerank import Embedder, Reranker  # noqa: E402
from qrerank.serving.app import create_app  # noqa: E402
from qrerank.serving.options import ServerOptions  # noqa: E402
from qrerank.serving.server import BackgroundServer  # noqa: E402

KEY = "secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = dict(reranker_name="rr", embedder_name="ee", api_keys=(KEY,), max_body_bytes=4096, max_inputs=4)
RERANK = {"query": "q", "documents": ["a", "b"]}
EMBED = {"input": ["a"]}


@pytest.fixture(scope="module")
def server(reranker: Reranker, embedder: Embedder) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(reranker, embedder, ServerOptions(**LIMITS))) as running:  # type: ignore[arg-type]
        yield running


def _with(base: dict[str, Any], **changes: Any) -> bytes:
    body = {**base, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def _chunks() -> Iterator[bytes]:
    """An oversized body without Content-Length (chunked transfer)."""
    yield b'{"query": "q", "documents": ["'
    for _ in range(10):
        yield b"x" * 1000
    yield b'"]}'


# (route, body, headers, status, a fragment of the message)
CASES: list[tuple[str, Any, dict[str, str], int, str]] = [
    ("/v1/rerank", b'{"query": "q", "documents": [', AUTH, 400, "not valid JSON"),
    ("/v1/rerank", b'{"query": "\xff\xfe", "documents": ["a"]}', AUTH, 400, "not valid UTF-8"),
    ("/v1/rerank", b"", AUTH, 400, "empty"),
    ("/v1/rerank", b"[" * 1500 + b"]" * 1500, AUTH, 422, "body: expected `object`, got `array`"),
    ("/v1/embeddings", b'{"input": "a", "dimensions": NaN}', AUTH, 400, "(byte 29), in the value of 'dimensions'"),
    ("/v1/rerank", b'["q", ["a"]]', AUTH, 422, "body: expected `object`, got `array`"),
    ("/v1/rerank", b'"just a string"', AUTH, 422, "body: expected `object`, got `str`"),
    ("/v1/rerank", _with(RERANK, query=...), AUTH, 422, "query: field required"),
    ("/v1/rerank", _with(RERANK, documents=...), AUTH, 422, "documents: field required"),
    ("/v1/rerank", _with(RERANK, documents=[]), AUTH, 422, "documents"),
    ("/v1/rerank", _with(RERANK, query=42), AUTH, 422, "query: expected `str`, got `int`"),
    ("/v1/rerank", _with(RERANK, documents="a single string"), AUTH, 422, "documents"),
    ("/v1/rerank", _with(RERANK, documents=["a", {"content": "b"}]), AUTH, 422, "documents[1] has no 'text' field"),
    ("/v1/rerank", _with(RERANK, documents=[{"text": "a", "n": 1}]), AUTH, 422, "documents[0][...]: expected `str`"),
    ("/v1/rerank", _with(RERANK, documents=["a", None]), AUTH, 422, "documents[1]: expected `str | object`"),
    ("/v1/rerank", _with(RERANK, top_n=-1), AUTH, 422, "top_n: expected `int` >= 0"),
    ("/v1/rerank", _with(RERANK, top_n=10**30), AUTH, 422, "top_n must be between 1 and 4"),
    ("/v1/rerank", b'{"query": "\\ud800", "documents": ["a"]}', AUTH, 400, "(byte 17), in the value of 'query'"),
    ("/v1/rerank", _with(RERANK, top_n=2.5), AUTH, 422, "top_n"),
    ("/v1/rerank", _with(RERANK, return_documents="yes"), AUTH, 422, "return_documents"),
    ("/v1/rerank", _with(RERANK, documents=[{"text": "a"}], rank_fields=["title"]), AUTH, 422, "none of the"),
    ("/v1/rerank", _with(RERANK, truncate_prompt_tokens=8), AUTH, 422, "truncate_prompt_tokens: 8 is not"),
    ("/v1/rerank", _with(RERANK, documents=["d"] * 5), AUTH, 413, "at most 4"),
    ("/v1/rerank", _with(RERANK, documents=["word " * 1000]), AUTH, 413, "4096 bytes"),
    ("/v1/rerank", _chunks(), AUTH, 413, "exceeds the limit"),
    ("/v1/rerank", _with(RERANK, documents=["word " * 300]), AUTH, 413, "documents[0] is longer"),
    ("/v1/rerank", _with(RERANK, model="other"), AUTH, 404, "'rr', 'ee'"),
    ("/v1/rerank", _with(RERANK, model="ee"), AUTH, 404, "reranker 'ee' is not served"),
    ("/v1/embeddings", _with(EMBED, input=[]), AUTH, 422, "input"),
    ("/v1/embeddings", _with(EMBED, input=[101, -5]), AUTH, 422, "input[1]"),
    ("/v1/embeddings", _with(EMBED, input=[[101], []]), AUTH, 422, "input[1]"),
    ("/v1/embeddings", _with(EMBED, input=[101, 10**7]), AUTH, 422, "input[0] holds the token id 10000000, outside"),
    ("/v1/embeddings", _with(EMBED, input=["a", [101]]), AUTH, 422, "not a mix of them"),
    ("/v1/embeddings", _with(EMBED, input=[101], instruction="Find it"), AUTH, 422, "token-id input"),
    ("/v1/embeddings", _with(EMBED, input=[7] * 300), AUTH, 413, "input[0] is longer"),
    ("/v1/embeddings", _with(EMBED, modality="image"), AUTH, 422, "modality"),
    (
        "/v1/embeddings",
        _with(EMBED, dimensions=-8),
        AUTH,
        422,
        "dimensions: expected `int` >= 1",
    ),
    ("/v1/embeddings", _with(EMBED, dimensions=1000), AUTH, 422, "dimensions: dim must be between 32 and 64"),
    ("/v1/embeddings", _with(EMBED, encoding_format="int8"), AUTH, 422, "encoding_format"),
    ("/v1/embeddings", _with(EMBED, model="text-embedding-3-small"), AUTH, 404, "'rr', 'ee'"),
    ("/v1/embeddings", _with(EMBED, input=["a"] * 5), AUTH, 413, "at most 4"),
    ("/v1/inference/unknown/model", _with({"queries": ["q"], "documents": ["a"]}), AUTH, 404, "'unknown/model'"),
    ("/v1/inference/rr", _with({"queries": ["q", "r"], "documents": ["a", "b", "c"]}), AUTH, 422, "one per document"),
    ("/v1/inference/rr", _with({"queries": [], "documents": ["a"]}), AUTH, 422, "queries"),
    ("/embed", _with({"inputs": None}), AUTH, 422, "inputs"),
    ("/embed", _with({"inputs": "a", "prompt_name": "query"}), AUTH, 422, "no prompt named 'query' is served"),
    ("/embed", _with({"inputs": "a", "truncate": True, "truncation_direction": "Left"}), AUTH, 422, "'Left' is not"),
    ("/embed", _with({"inputs": "a", "truncation_direction": "Up"}), AUTH, 422, "truncation_direction"),
    ("/", _with({"inputs": "a", "prompt_name": "doc"}), AUTH, 422, "no prompt named 'doc'"),
    ("/", _with({"query": "q"}), AUTH, 422, "none of the fields 'inputs', 'texts'"),
    ("/", b"[1]", AUTH, 422, "body: expected `object`"),
    ("/rerank", _with({"query": "q"}), AUTH, 422, "none of the fields 'texts', 'documents'"),
    ("/rerank", _with({"query": "q", "texts": []}), AUTH, 422, "texts"),
    ("/rerank", _with({"query": "q", "texts": ["a"], "raw_scores": "true"}), AUTH, 422, "raw_scores"),
    ("/v1/rerank", _with(RERANK), {"Authorization": "Bearer wrong-key"}, 401, "API key"),
    ("/v1/rerank", _with(RERANK), {}, 401, "API key"),
    ("/v1/rerank", _with(RERANK), {"Authorization": f"Basic {KEY}"}, 401, "API key"),
    ("/v1/embeddings", _with(EMBED), {"Authorization": f"Bearer {KEY}x"}, 401, "API key"),
    ("/v2/rerank", _with(RERANK, documents=[{"text": "a"}]), AUTH, 422, "documents[0]: expected `str`"),
    ("/v2/rerank", _with(RERANK, max_tokens_per_doc=0), AUTH, 422, "max_tokens_per_doc: expected `int` >= 1"),
    ("/v2/embed", _with({"texts": ["a"], "inputs": [{"content": [{"type": "text", "text": "a"}]}]}), AUTH, 422, "or"),
    ("/v2/embed", _with({"inputs": [{"content": [{"type": "image_url", "image_url": {}}]}]}), AUTH, 422, "type"),
    ("/v2/embed", _with({"texts": ["a"], "output_dimension": 1000}), AUTH, 422, "output_dimension: dim must be"),
    ("/v2/embed", _with({"texts": ["a"], "max_tokens": 8}), AUTH, 422, "max_tokens: inputs are cut at"),
    ("/v1/embed", _with({"texts": ["a"], "embedding_types": ["int8"]}), AUTH, 422, "'int8' is not served"),
    ("/v1/embed", _with({"texts": ["a"], "embedding_types": ["float16"]}), AUTH, 422, "embedding_types[0]"),
    ("/v1/embed", _with({"texts": ["a"], "truncate": "START"}), AUTH, 422, "truncate: 'START' is not supported"),
    ("/v1/embed", _with({"texts": ["a"], "images": ["data:image/png;base64,AA=="]}), AUTH, 422, "text only"),
    ("/v1/embed", _with({"texts": ["a"] * 5}), AUTH, 413, "texts holds 5 items"),
    ("/v1/embed", _with({"input_type": "search_query"}), AUTH, 422, "texts: field required"),
    ("/score", _with({"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}), AUTH, 422, "1:N) or as many as text_2"),
    ("/v1/score", _with({"text_1": "a", "text_2": []}), AUTH, 422, "text_2"),
    ("/v1/score", _with({"text_1": "a", "text_2": "b", "model": "ee"}), AUTH, 404, "reranker 'ee' is not served"),
    ("/v1/inference/rr", _with({"query": "q", "queries": ["q"], "documents": ["a"]}), AUTH, 422, "one of them"),
    ("/v1/inference/rr", _with({"documents": ["a"]}), AUTH, 422, "one of them"),
]


@pytest.mark.parametrize(("route", "body", "headers", "status", "fragment"), CASES)
def test_bad_request_gets_its_4xx_json_error(
    server: BackgroundServer, route: str, body: Any, headers: dict[str, str], status: int, fragment: str
) -> None:
    response = httpx.post(server.url + route, content=body, headers={"content-type": "application/json", **headers})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and isinstance(error["type"], str)
    assert fragment in error["message"], error["message"]
    assert response.json()["detail"] == error["message"]  # for clients that read FastAPI's `detail`
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_an_ignored_field_nested_past_the_recursion_limit_is_400(reranker: Reranker) -> None:
    # Deeper than any recursion limit (Inductor raises Python's to 2,000 once it has compiled something).
    body = b'{"query": "q", "documents": ["a"], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with BackgroundServer(create_app(reranker, None, ServerOptions(reranker_name="rr"))) as running:
        response = httpx.post(running.url + "/v1/rerank", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "nests JSON too deeply" in response.json()["error"]["message"]
        assert httpx.get(running.url + "/health").status_code == 200


def test_integers_beyond_pythons_digit_limit_are_422_naming_the_field(reranker: Reranker, embedder: Embedder) -> None:
    huge = b"9" * 5000  # json.loads raises ValueError beyond 4,300 digits
    options = ServerOptions(reranker_name="rr", embedder_name="ee")
    with BackgroundServer(create_app(reranker, embedder, options)) as running:
        for route, body, field in [
            ("/v1/rerank", b'{"query": "q", "documents": ["a"], "top_n": ' + huge + b"}", "top_n"),
            ("/v1/embeddings", b'{"input": "a", "dimensions": ' + huge + b"}", "dimensions"),
        ]:
            response = httpx.post(running.url + route, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422, response.text
            assert f"{field}: integer value out of range" in response.json()["error"]["message"]


def test_wrong_method_is_405(server: BackgroundServer) -> None:
    response = httpx.get(server.url + "/v1/rerank", headers=AUTH)
    assert response.status_code == 405 and response.json()["error"]["code"] == 405


def test_server_is_healthy_after_the_matrix_and_counted_no_500(server: BackgroundServer) -> None:
    assert len(CASES) >= 25
    assert httpx.get(server.url + "/health").status_code == 200
    ok = httpx.post(server.url + "/v1/rerank", json=RERANK, headers=AUTH)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2
    metrics = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert 'status="500"' not in metrics
    assert 'qrerank_errors_total{route="/v1/rerank",status="401"}' in metrics


def test_a_request_over_the_timeout_gets_504_and_its_work_is_dropped(reranker: Reranker) -> None:
    # The batcher waits 1 s for company; the request may take 0.2 s: it times out while queued.
    options = ServerOptions(reranker_name="rr", request_timeout_s=0.2, max_wait_ms=1000)
    with BackgroundServer(create_app(reranker, None, options)) as slow:
        response = httpx.post(slow.url + "/v1/rerank", json=RERANK)
        assert response.status_code == 504 and "0.2 s" in response.json()["error"]["message"]
        metrics = httpx.get(slow.url + "/metrics").text
        assert 'qrerank_cancelled_total{kind="score"} 1.0' in metrics
        assert 'qrerank_batch_requests_count{kind="score"}' not in metrics  # nothing was computed


def test_server_options_are_checked() -> None:
    with pytest.raises(ValueError, match="both named 'm'"):
        ServerOptions(reranker_name="m", embedder_name="m")
    with pytest.raises(ValueError, match="max_inputs must be >= 1, got 0"):
        ServerOptions(reranker_name="m", max_inputs=0)
    with pytest.raises(ValueError, match="request_timeout_s must be > 0, got 0"):
        ServerOptions(reranker_name="m", request_timeout_s=0)
    with pytest.raises(ValueError, match=r"api_keys\[1\] is empty"):
        ServerOptions(reranker_name="m", api_keys=("k", ""))
    with pytest.raises(ValueError, match=r"api_keys\[0\] is empty, or starts or ends with whitespace"):
        ServerOptions(reranker_name="m", api_keys=(" padded",))
    with pytest.raises(ValueError, match="control characters"):
        ServerOptions(reranker_name="m", api_keys=("line\nbreak",))
    with pytest.raises(TypeError, match="api_keys must be a tuple of strings, got str"):
        ServerOptions(reranker_name="m", api_keys="one-key")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be blank"):
        ServerOptions(reranker_name=" ")


def test_app_names_exactly_the_served_models(reranker: Reranker) -> None:
    with pytest.raises(ValueError, match=r"the reranker is given but options\.reranker_name is None"):
        create_app(reranker, None, ServerOptions(embedder_name="e"))
    with pytest.raises(ValueError, match=r"the embedder is not given but options\.embedder_name is 'e'"):
        create_app(reranker, None, ServerOptions(reranker_name="r", embedder_name="e"))
    with pytest.raises(TypeError, match="options must be a ServerOptions, got dict"):
        create_app(reranker, None, {"reranker_name": "r"})  # type: ignore[arg-type]
