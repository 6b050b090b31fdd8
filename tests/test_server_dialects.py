"""Each API family's own fields and answers, against the direct calls: vLLM score, TEI's bare URL, /info and
/tokenize, Infinity's rerank answer, DeepInfra's single query, prompts, model aliases, strict and lenient fields."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from qrerank import Embedder, Reranker  # noqa: E402
from qrerank.cli import _api_options, build_parser  # noqa: E402
from qrerank.serving.app import create_app  # noqa: E402
from qrerank.serving.options import ServerOptions  # noqa: E402
from qrerank.serving.server import BackgroundServer  # noqa: E402
from qrerank.testing import random_checkpoint  # noqa: E402

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "France is in Europe, its capital is Paris."]
PROMPT = "query: "


@pytest.fixture(scope="module")
def client(reranker: Reranker, embedder: Embedder) -> Iterator[httpx.Client]:
    options = ServerOptions(
        reranker_name="rr", reranker_aliases=("rerank-v3.5",), embedder_name="ee", prompts={"query": PROMPT}
    )
    with BackgroundServer(create_app(reranker, embedder, options)) as running:
        with httpx.Client(base_url=running.url, timeout=30) as c:
            yield c


def _close(got: object, expected: np.ndarray, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("route", ["/score", "/v1/score"])
def test_vllm_score_pairs_one_to_many_and_many_to_many(client: httpx.Client, reranker: Reranker, route: str) -> None:
    one = client.post(route, json={"model": "rr", "text_1": QUERY, "text_2": DOCS}).json()
    assert one["object"] == "list" and one["model"] == "rr"
    assert [(d["index"], d["object"]) for d in one["data"]] == [(0, "score"), (1, "score"), (2, "score")]
    _close([d["score"] for d in one["data"]], reranker.score(QUERY, DOCS))
    lengths = [len(ids) for ids in reranker.prompt.encode([(QUERY, d) for d in DOCS], None)]
    assert one["usage"] == {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths), "completion_tokens": 0}
    queries = [QUERY, "yellow fruit?", QUERY]
    many = client.post(route, json={"text_1": queries, "text_2": DOCS}).json()
    _close([d["score"] for d in many["data"]], reranker.score_pairs(list(zip(queries, DOCS))))
    single = client.post(route, json={"text_1": [QUERY], "text_2": DOCS[0], "use_activation": False}).json()
    _close([d["score"] for d in single["data"]], reranker.score(QUERY, DOCS[:1], raw=True), atol=1e-5)


def test_vllm_rerank_body_top_n_zero_is_every_document(client: httpx.Client, reranker: Reranker) -> None:
    body = {"model": "rr", "query": QUERY, "documents": DOCS, "top_n": 0, "truncate_prompt_tokens": -1}
    results = client.post("/v1/rerank", json=body).json()["results"]
    scores = reranker.score(QUERY, DOCS)
    assert [r["index"] for r in results] == list(np.argsort(-scores, kind="stable"))


def test_infinity_rerank_answers_in_its_own_shape(client: httpx.Client, reranker: Reranker) -> None:
    scores, raw = reranker.score(QUERY, DOCS), reranker.score(QUERY, DOCS, raw=True)
    order = list(np.argsort(-scores, kind="stable"))
    got = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": True, "top_n": 2}).json()
    assert got["object"] == "rerank" and got["model"] == "rr" and got["id"].startswith("infinity-")
    assert [r["index"] for r in got["results"]] == order[:2]
    assert [r["document"] for r in got["results"]] == [DOCS[i] for i in order[:2]]  # plain strings
    _close([r["relevance_score"] for r in got["results"]], scores[order[:2]])
    # Infinity's raw_scores marks its body on /v1/rerank too
    v1 = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "raw_scores": True}).json()
    assert v1["object"] == "rerank" and all("document" not in r for r in v1["results"])
    _close([r["relevance_score"] for r in v1["results"]], raw[[r["index"] for r in v1["results"]]], atol=1e-5)


def test_tei_bare_url_routes_by_body_shape(client: httpx.Client, reranker: Reranker, embedder: Embedder) -> None:
    embedded = client.post("/", json={"inputs": ["one", "two"], "prompt_name": "query"}).json()
    _close(embedded, embedder.embed([PROMPT + "one", PROMPT + "two"]))
    uncut = client.post("/embed", json={"inputs": "one", "truncation_direction": "left"})  # nothing to cut: accepted
    _close(uncut.json(), embedder.embed(["one"]))
    ranked = client.post("/", json={"query": QUERY, "texts": DOCS, "top_n": 2, "truncation_direction": "Right"}).json()
    scores = reranker.score(QUERY, DOCS)
    assert [r["index"] for r in ranked] == list(np.argsort(-scores, kind="stable")[:2])
    _close([r["score"] for r in ranked], scores[[r["index"] for r in ranked]])


def test_tei_info_and_tokenize(client: httpx.Client, embedder: Embedder) -> None:
    info = client.get("/info").json()
    assert info["model_id"] == "ee" and info["model_type"] == {"embedding": {"pooling": "last_token"}}
    assert info["max_input_length"] == 256 and info["model_dtype"] == "float32"
    text = "Héllo world"
    tokens = client.post("/tokenize", json={"inputs": text, "prompt_name": "query"}).json()
    assert [t["id"] for t in tokens[0]] == embedder.prompt.encode([PROMPT + text], None)[0]
    assert "".join(t["text"] for t in tokens[0][:-1]) == PROMPT + text
    eos = {"id": embedder.prompt.eos_id, "text": "<|endoftext|>", "special": True, "start": None, "stop": None}
    assert tokens[0][-1] == eos
    bare = client.post("/tokenize", json={"inputs": [text], "add_special_tokens": False}).json()
    assert [t["id"] for t in bare[0]] == embedder.prompt.encode([text], None)[0][:-1]


def test_deepinfra_single_query_string(client: httpx.Client, reranker: Reranker) -> None:
    got = client.post("/v1/inference/rerank-v3.5", json={"query": QUERY, "documents": DOCS}).json()
    _close(got["scores"], reranker.score(QUERY, DOCS))


def test_aliases_answer_with_the_name_asked_for(client: httpx.Client) -> None:
    models = [(m["id"], m["task"]) for m in client.get("/v1/models").json()["data"]]
    assert models == [("rr", "rerank"), ("rerank-v3.5", "rerank"), ("ee", "embed")]
    answer = client.post("/v1/rerank", json={"model": "rerank-v3.5", "query": "q", "documents": ["a"]}).json()
    assert answer["model"] == "rerank-v3.5"
    assert client.post("/v1/embeddings", json={"model": "other", "input": "a"}).status_code == 404


def test_peer_fields_are_ignored_unless_strict(reranker: Reranker) -> None:
    body = {"query": "q", "documents": ["a"], "priority": 3, "user": "u", "mystery": {"deep": [1, [2]]}}
    for strict, status in ((False, 200), (True, 422)):
        options = ServerOptions(reranker_name="rr", strict_fields=strict)
        with BackgroundServer(create_app(reranker, None, options)) as running:
            response = httpx.post(running.url + "/v1/rerank", json=body)
            assert response.status_code == status, response.text
            documented = {k: v for k, v in body.items() if k != "mystery"}  # vLLM's priority and user: accepted
            assert httpx.post(running.url + "/v1/rerank", json=documented).status_code == 200
            nested = {"query": "q", "texts": ["a"], "truncation_direction": "Right"}
            assert httpx.post(running.url + "/rerank", json={**nested, "x": 1}).status_code == status
    assert "mystery: unknown field" in response.json()["error"]["message"]


def test_info_and_tokenize_of_a_reranker_alone(reranker: Reranker) -> None:
    with BackgroundServer(create_app(reranker, None, ServerOptions(reranker_name="rr"))) as running:
        info = httpx.get(running.url + "/info").json()
        assert info["model_id"] == "rr" and "reranker" in info["model_type"]
        tokens = httpx.post(running.url + "/tokenize", json={"inputs": "a text"}).json()[0]
        assert [t["id"] for t in tokens] == reranker.prompt.tokenizer.encode("a text", add_special_tokens=False).ids


def test_a_sentence_transformers_checkpoints_prompts_are_served(tmp_path: Path) -> None:
    folder = random_checkpoint(tmp_path / "st", "tiny", "embedding", seed=2, sentence_transformers=True)
    embedder = Embedder(folder, device="cpu", dtype="float32", max_length=128)
    options = ServerOptions(embedder_name="ee", prompts={"mine": PROMPT})  # --prompt overlays the checkpoint's
    texts = ["how do I sort a list?", "the capital of France"]
    with BackgroundServer(create_app(None, embedder, options)) as running:
        for name in ("query", "document", "mine"):
            got = httpx.post(running.url + "/embed", json={"inputs": texts, "prompt_name": name}).json()
            _close(got, embedder.embed(texts, prompt={**embedder.prompts, "mine": PROMPT}[name]))
    assert embedder.prompts["query"].startswith("Instruct: ")


def test_accept_any_model_name(embedder: Embedder) -> None:
    options = ServerOptions(embedder_name="ee", accept_any_model_name=True)
    with BackgroundServer(create_app(None, embedder, options)) as running:
        response = httpx.post(running.url + "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "a"})
        assert response.status_code == 200 and response.json()["model"] == "ee"
        rerank = httpx.post(running.url + "/v1/rerank", json={"model": "x", "query": "q", "documents": ["a"]})
        assert rerank.status_code == 404 and "serves no reranker" in rerank.json()["detail"]


def test_api_arguments_of_qrerank_serve() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["serve", "--model", "m", "--served-model-name", "a", "b", "--prompt", "query=q: ", "--prompt", "doc=",
         "--accept-any-model-name", "--strict-fields", "--default-query-instruction", "Find it"]
    )  # fmt: skip
    options = ServerOptions(**_api_options(args))  # type: ignore[arg-type]
    assert (options.reranker_name, options.reranker_aliases, options.embedder_name) == ("a", ("b",), None)
    assert dict(options.prompts) == {"query": "q: ", "doc": ""}
    assert options.accept_any_model_name and options.strict_fields and options.default_query_instruction == "Find it"
    with pytest.raises(ValueError, match="--prompt takes NAME=TEXT, got 'query'"):
        _api_options(parser.parse_args(["serve", "--model", "m", "--prompt", "query"]))
    with pytest.raises(ValueError, match="both named 'a'"):
        ServerOptions(reranker_name="a", embedder_name="e", embedder_aliases=("a",))
    with pytest.raises(ValueError, match="aliases are given but no embedder_name"):
        ServerOptions(reranker_name="a", embedder_aliases=("b",))


def test_openai_route_follows_auto_truncate_for_text_and_token_ids(embedder: Embedder) -> None:
    long_text = "word " * 400  # over the fixture's max_length of 256 tokens
    ids = embedder.prompt.tokenizer.encode(long_text, add_special_tokens=False).ids
    with BackgroundServer(create_app(None, embedder, ServerOptions(embedder_name="ee", auto_truncate=True))) as running:
        for given in (long_text, ids):
            response = httpx.post(running.url + "/v1/embeddings", json={"input": given})
            assert response.status_code == 200, response.text
            _close(response.json()["data"][0]["embedding"], embedder.embed(long_text)[0])
