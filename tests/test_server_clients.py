"""A real server driven by each client library, unchanged but for its base URL and key: every result
equals the in-process call (openai, cohere v1 Client and v2 ClientV2, huggingface_hub's InferenceClient,
langchain-cohere's rerank and embeddings)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest

openai = pytest.importorskip("openai")
cohere = pytest.importorskip("cohere")
huggingface_hub = pytest.importorskip("huggingface_hub")
langchain_cohere = pytest.importorskip("langchain_cohere")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from qrerank import Embedder, Reranker  # noqa: E402
from qrerank.serving.app import create_app  # noqa: E402
from qrerank.serving.options import DEFAULT_QUERY_INSTRUCTION, ServerOptions  # noqa: E402
from qrerank.serving.server import BackgroundServer  # noqa: E402

KEY = "client-key-71c2"
RERANKER = "Qwen/Qwen3-Reranker-tiny"
EMBEDDER = "qwen3-embedding-tiny"
QUERY_PROMPT = "Instruct: Find the answer\nQuery:"
QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "", "France is in Europe, its capital is Paris."]
TEXTS = ["how do I sort a list?", "Use sorted(xs).", ""]


@pytest.fixture(scope="module")
def url(reranker: Reranker, embedder: Embedder) -> Iterator[str]:
    options = ServerOptions(
        reranker_name=RERANKER,
        embedder_name=EMBEDDER,
        api_keys=(KEY,),
        accept_any_model_name=True,  # clients that hard-code a name (text-embedding-3-small, rerank-v3.5)
        prompts={"query": QUERY_PROMPT},
    )
    with BackgroundServer(create_app(reranker, embedder, options)) as running:
        yield running.url


def _close(got: object, expected: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), expected, rtol=0, atol=1e-6)


def _base64(strings: list[str]) -> np.ndarray:
    return np.array([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in strings])


def test_openai_token_ids_and_a_hard_coded_model_name(url: str, embedder: Embedder) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    ids = [seq[:-1] for seq in embedder.prompt.encode(TEXTS[:2], None)]  # the texts' ids, without <|endoftext|>
    several = client.embeddings.create(model="text-embedding-3-small", input=ids, encoding_format="float")
    assert several.model == EMBEDDER
    _close([d.embedding for d in several.data], embedder.embed(TEXTS[:2]))
    assert several.usage.prompt_tokens == sum(len(seq) + 1 for seq in ids)
    one = client.embeddings.create(model=EMBEDDER, input=ids[0], dimensions=32)  # a list of ints: one text
    _close([one.data[0].embedding], embedder.embed(TEXTS[:1], dim=32))


def test_cohere_v1_rerank_with_objects_and_rank_fields(url: str, reranker: Reranker) -> None:
    client = cohere.Client(api_key=KEY, base_url=url, timeout=30)
    documents = [
        {"title": "Capitals", "text": DOCS[0], "id": "a"},
        {"title": "Fruit", "text": DOCS[1], "id": "b"},
        {"text": DOCS[3], "id": "c"},  # no title: ranked by its text alone
    ]
    response = client.rerank(
        model="rerank-v3.5", query=QUERY, documents=documents, rank_fields=["title", "text"], return_documents=True
    )
    ranked = [f"title: Capitals\ntext: {DOCS[0]}", f"title: Fruit\ntext: {DOCS[1]}", f"text: {DOCS[3]}"]
    expected = reranker.score(QUERY, ranked)
    assert [r.index for r in response.results] == list(np.argsort(-expected, kind="stable"))
    _close([r.relevance_score for r in response.results], expected[[r.index for r in response.results]])
    assert [r.document.id for r in response.results] == [documents[r.index]["id"] for r in response.results]
    plain = client.rerank(query=QUERY, documents=DOCS, top_n=2, max_chunks_per_doc=1)
    scores = reranker.score(QUERY, DOCS)
    assert [r.index for r in plain.results] == list(np.argsort(-scores, kind="stable")[:2])
    _close([r.relevance_score for r in plain.results], scores[[r.index for r in plain.results]])


def test_cohere_v1_embed(url: str, embedder: Embedder) -> None:
    client = cohere.Client(api_key=KEY, base_url=url, timeout=30)
    floats = client.embed(texts=TEXTS, model=EMBEDDER, input_type="search_query")
    assert floats.response_type == "embeddings_floats" and floats.texts == TEXTS
    _close(floats.embeddings, embedder.embed(TEXTS, instruction=DEFAULT_QUERY_INSTRUCTION))
    typed = client.embed(texts=TEXTS, model=EMBEDDER, input_type="search_document", embedding_types=["float", "base64"])
    _close(typed.embeddings.float_, embedder.embed(TEXTS))
    _close(_base64(typed.embeddings.base64), embedder.embed(TEXTS))


def test_cohere_v2_rerank_and_embed(url: str, reranker: Reranker, embedder: Embedder) -> None:
    client = cohere.ClientV2(api_key=KEY, base_url=url, timeout=30)
    response = client.rerank(model=RERANKER, query=QUERY, documents=DOCS, top_n=3)
    scores = reranker.score(QUERY, DOCS)
    assert [r.index for r in response.results] == list(np.argsort(-scores, kind="stable")[:3])
    _close([r.relevance_score for r in response.results], scores[[r.index for r in response.results]])
    embedded = client.embed(
        model=EMBEDDER, input_type="classification", texts=TEXTS, output_dimension=32, embedding_types=["base64"]
    )
    _close(_base64(embedded.embeddings.base64), embedder.embed(TEXTS, dim=32))
    inputs = [{"content": [{"type": "text", "text": t}]} for t in TEXTS]
    by_inputs = client.embed(model=EMBEDDER, input_type="search_query", inputs=inputs, embedding_types=["float"])
    _close(by_inputs.embeddings.float_, embedder.embed(TEXTS, instruction=DEFAULT_QUERY_INSTRUCTION))


def test_huggingface_inference_client_at_the_bare_url(url: str, embedder: Embedder) -> None:
    client = huggingface_hub.InferenceClient(base_url=url, api_key=KEY)
    got = client.feature_extraction(TEXTS, prompt_name="query", truncate=True, truncation_direction="right")
    _close(got, embedder.embed([QUERY_PROMPT + t for t in TEXTS]))
    raw = client.feature_extraction("one text", normalize=False)
    np.testing.assert_allclose(raw, embedder.embed(["one text"], normalize=False), rtol=0, atol=1e-5)


def test_langchain_cohere_rerank_and_embeddings(url: str, reranker: Reranker, embedder: Embedder) -> None:
    ranker = langchain_cohere.CohereRerank(base_url=url, cohere_api_key=KEY, model=RERANKER, top_n=2)
    documents = [DOCS[0], DOCS[1], {"title": "France", "text": DOCS[3]}]
    got = ranker.rerank(documents, QUERY)
    expected = reranker.score(QUERY, [DOCS[0], DOCS[1], f"title: France\ntext: {DOCS[3]}\n"])  # its own YAML
    assert [r["index"] for r in got] == list(np.argsort(-expected, kind="stable")[:2])
    _close([r["relevance_score"] for r in got], expected[[r["index"] for r in got]])
    embeddings = langchain_cohere.CohereEmbeddings(base_url=url, cohere_api_key=KEY, model=EMBEDDER)
    _close(embeddings.embed_documents(TEXTS), embedder.embed(TEXTS))
    _close([embeddings.embed_query(QUERY)], embedder.embed([QUERY], instruction=DEFAULT_QUERY_INSTRUCTION))
