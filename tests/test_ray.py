"""Ray on one local CPU instance: Ray Data map_batches embeds and scores a dataset; Ray Serve serves the HTTP API."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from qrerank import Embedder, Reranker  # noqa: E402
from qrerank.integrations.ray import EmbedBatches, ScoreBatches, serve_deployment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXTS = [f"passage {i} about {'rivers' if i % 2 else 'mountains'} and the sea" for i in range(20)]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Workers import qrerank from this checkout (installed or not) and run Triton, if at all, as the tests do.
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if "TRITON_INTERPRET" in os.environ:
        env["TRITON_INTERPRET"] = os.environ["TRITON_INTERPRET"]
    ray.init(num_cpus=1, include_dashboard=False, logging_level="warning", runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def test_map_batches_embeds_a_dataset(local_ray: None, embedding_dir: Path, embedder: Embedder) -> None:
    dataset = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    constructor = {"model": str(embedding_dir), "dim": 32, "device": "cpu", "dtype": "float32", "max_length": 256}
    rows = dataset.map_batches(EmbedBatches, fn_constructor_kwargs=constructor, batch_size=8, concurrency=1).take_all()
    rows.sort(key=lambda row: row["id"])
    assert [row["text"] for row in rows] == TEXTS  # the other columns pass through
    got = np.stack([row["embedding"] for row in rows])
    np.testing.assert_allclose(got, embedder.embed(TEXTS, dim=32), rtol=0, atol=1e-6)


def test_map_batches_scores_query_document_pairs(local_ray: None, reranker_dir: Path, reranker: Reranker) -> None:
    queries = ["rivers?" if i % 3 else "mountains?" for i in range(len(TEXTS))]
    dataset = ray.data.from_items([{"query": q, "document": d} for q, d in zip(queries, TEXTS)])
    constructor = {"model": str(reranker_dir), "device": "cpu", "dtype": "float32", "max_length": 256}
    constructor["output_column"] = "relevance"
    rows = dataset.map_batches(ScoreBatches, fn_constructor_kwargs=constructor, batch_size=8, concurrency=1).take_all()
    by_pair = {(row["query"], row["document"]): row["relevance"] for row in rows}
    expected = reranker.score_pairs(list(zip(queries, TEXTS)))
    np.testing.assert_allclose([by_pair[p] for p in zip(queries, TEXTS)], expected, rtol=0, atol=1e-6)


def test_batch_classes_check_their_arguments(embedding_dir: Path, reranker_dir: Path) -> None:
    with pytest.raises(ValueError, match="dim must be between 32 and 64, got 8"):
        EmbedBatches(embedding_dir, dim=8, device="cpu")
    with pytest.raises(TypeError, match="raw must be a bool, got str"):
        ScoreBatches(reranker_dir, raw="no", device="cpu")
    embed = EmbedBatches(embedding_dir, column="body", device="cpu")
    with pytest.raises(ValueError, match="no column 'body'; its columns are \\['text'\\]"):
        embed({"text": np.array(["a"], dtype=object)})
    with pytest.raises(ValueError, match="needs a reranker, an embedder or both"):
        serve_deployment()


def test_serve_deployment_answers_the_http_api(
    local_ray: None, reranker_dir: Path, embedding_dir: Path, reranker: Reranker, embedder: Embedder
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        deployment = serve_deployment(
            reranker_dir,
            embedding_dir,
            served_model_name="rr",
            engine_args={"device": "cpu", "dtype": "float32", "max_length": 256},  # as the fp32 fixtures
            api_keys=("ray-key",),
        )
        serve.run(deployment.options(ray_actor_options={"num_cpus": 0}).bind(), name="qrerank", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer ray-key"}) as client:
            names = [m["id"] for m in client.get("/v1/models", timeout=30).json()["data"]]
            assert names == ["rr", str(embedding_dir)]
            scores = client.post("/v1/inference/rr", json={"queries": ["q"], "documents": ["a", "b"]}).json()
            np.testing.assert_allclose(scores["scores"], reranker.score("q", ["a", "b"]), rtol=0, atol=1e-6)
            data = client.post("/v1/embeddings", json={"input": ["x"]}).json()["data"]
            np.testing.assert_allclose(data[0]["embedding"], embedder.embed(["x"])[0], rtol=0, atol=1e-6)
            assert client.post("/v1/rerank", json={"query": "q"}).status_code == 422
    finally:
        serve.shutdown()
