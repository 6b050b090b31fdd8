"""Load: 32 concurrent clients x 100 mixed requests, no errors, every result equal to the direct call, merged passes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

aiohttp = pytest.importorskip("aiohttp")  # httpx's async pool costs ~10 ms a request here: it would be the bottleneck
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
parser = pytest.importorskip("prometheus_client.parser")

from qrerank import Embedder, Reranker  # noqa: E402
from qrerank.serving.app import create_app  # noqa: E402
from qrerank.serving.options import ServerOptions  # noqa: E402
from qrerank.serving.server import BackgroundServer  # noqa: E402

CLIENTS, REQUESTS_PER_CLIENT = 32, 100
WORDS = "paris france capital banana yellow python snake sort list tokyo japan river sea gravity force".split()

# A request: (route, JSON body, a check of the response against the direct call)
Case = tuple[str, dict[str, Any], Callable[[Any], None]]


def _close(got: Any, expected: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), expected, rtol=0, atol=1e-6)


def _cases(reranker: Reranker, embedder: Embedder) -> list[Case]:
    """Distinct small requests over four routes, each with its expected result computed directly."""
    rng = random.Random(0)

    def text(k: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(1, k)))

    cases: list[Case] = []
    for _ in range(12):
        query, docs = text(4), [text(8) for _ in range(rng.randint(1, 3))]
        scores = reranker.score(query, docs)
        order = [int(i) for i in np.argsort(-scores, kind="stable")]

        def check_rerank(r: Any, scores: np.ndarray = scores, order: list[int] = order) -> None:
            assert [x["index"] for x in r["results"]] == order
            _close([x["relevance_score"] for x in r["results"]], scores[order])

        def check_inference(r: Any, scores: np.ndarray = scores) -> None:
            _close(r["scores"], scores)

        cases.append(("/v1/rerank", {"query": query, "documents": docs}, check_rerank))
        cases.append(("/v1/inference/rr", {"queries": [query], "documents": docs}, check_inference))
    for _ in range(12):
        texts, dim = [text(8) for _ in range(rng.randint(1, 3))], rng.choice([None, 32])
        vectors = embedder.embed(texts, dim=dim)
        instructed = embedder.embed(texts, instruction="Find it")

        def check_openai(r: Any, vectors: np.ndarray = vectors) -> None:
            _close([d["embedding"] for d in r["data"]], vectors)

        def check_tei(r: Any, instructed: np.ndarray = instructed) -> None:
            _close(r, instructed)

        cases.append(("/v1/embeddings", {"input": texts, "dimensions": dim}, check_openai))
        cases.append(("/embed", {"inputs": texts, "instruction": "Find it"}, check_tei))
    return cases


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """2 shared cores: torch's 2 intra-op threads and the server's threads oversubscribe them (100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(reranker: Reranker, embedder: Embedder, one_torch_thread: None) -> Iterator[BackgroundServer]:
    options = ServerOptions(reranker_name="rr", embedder_name="ee", max_wait_ms=5)
    with BackgroundServer(create_app(reranker, embedder, options)) as running:
        yield running


def test_32_clients_x_100_mixed_requests(server: BackgroundServer, reranker: Reranker, embedder: Embedder) -> None:
    cases = _cases(reranker, embedder)
    failures: list[str] = []

    async def client(seed: int, http: aiohttp.ClientSession) -> int:
        rng, done = random.Random(seed), 0
        for _ in range(REQUESTS_PER_CLIENT):
            route, body, check = rng.choice(cases)
            async with http.post(route, json=body) as response:
                if response.status != 200:
                    failures.append(f"{route} {response.status} {(await response.text())[:200]}")
                    continue
                result = await response.json()
            try:
                check(result)
            except AssertionError as err:
                failures.append(f"{route} {body}: {err}")
                continue
            done += 1
        return done

    async def main() -> list[int]:
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(server.url, connector=connector, timeout=timeout) as http:
            return await asyncio.gather(*(client(seed, http) for seed in range(CLIENTS)))

    done = asyncio.run(main())
    assert failures == []
    assert sum(done) == CLIENTS * REQUESTS_PER_CLIENT

    text = httpx.get(server.url + "/metrics").text
    samples = {
        (s.name, s.labels.get("kind")): s.value for f in parser.text_string_to_metric_families(text) for s in f.samples
    }
    merged = {kind: samples["qrerank_batch_requests_sum", kind] for kind in ("score", "embed")}
    passes = {kind: samples["qrerank_batch_requests_count", kind] for kind in ("score", "embed")}
    assert sum(merged.values()) == CLIENTS * REQUESTS_PER_CLIENT  # each request in exactly one pass
    for kind in merged:
        assert merged[kind] / passes[kind] > 1.5, f"{kind}: {merged[kind]} requests in {passes[kind]} passes"
