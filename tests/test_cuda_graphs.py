"""CUDA-graph bookkeeping and warm-up on the CPU: which buckets exist, which a warm-up captures, and how.

On the CPU torch.cuda's graph API is replaced by recording stand-ins (the forward inside each "capture"
still runs, eagerly), so these tests check the engine's side of capture: every bucket a planned batch can
reach is known, a warm-up captures exactly those, and every capture happens under the engine's lock in
thread-local mode even with concurrent callers. Replay itself is a no-op here: real capture and replay
run in tests/test_gpu.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qrerank import Embedder, EmbedRequest, Reranker
from qrerank.cuda_graphs import CudaGraphs
from qrerank.engine import EngineOptions
from qrerank.model import Qwen3

DOCS = [f"document {i} " * (1 + i % 7) for i in range(24)]


def _planned_buckets(graphs: CudaGraphs, max_batch_tokens: int, max_length: int) -> set[tuple[int, int]]:
    """Brute force: the bucket of every (tokens, sequences) a planned batch can have (1 to max_length tokens
    per packed sequence)."""
    shapes = {(t, s) for t in range(1, max_batch_tokens + 1) for s in range(-(-t // max_length), t + 1)}
    shapes |= {(t, s) for t in range(1, max_length + 1) for s in (1, 2)}  # one input alone, with its prefix
    return {bucket for t, s in shapes if (bucket := graphs.bucket(t, s)) is not None}


@pytest.mark.parametrize(
    ("max_batch_tokens", "max_length"), [(300, 700), (512, 512), (700, 100), (600, 7), (100, 100), (1, 5)]
)
def test_buckets_are_exactly_those_planned_batches_reach(max_batch_tokens: int, max_length: int) -> None:
    graphs = CudaGraphs(model=None, max_tokens=512)  # type: ignore[arg-type]
    assert set(graphs.buckets(max_batch_tokens, max_length)) == _planned_buckets(graphs, max_batch_tokens, max_length)


class _FakeStream:
    def wait_stream(self, other: object) -> None:
        pass


class _FakeGraph:
    def replay(self) -> None:
        pass

    def pool(self) -> tuple[int, int]:
        return (0, 0)


@pytest.fixture
def graphed(reranker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Reranker, list[dict[str, Any]]]:
    """A CPU reranker (limits of 256 tokens) whose engine takes the CUDA-graph path through stand-ins for
    torch.cuda's graph API, and the record of its captures: mode, and whether the engine's lock was held."""
    ours = Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=256)
    ours.engine._graphs = CudaGraphs(ours.engine.model)
    captures: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def graph(cuda_graph: _FakeGraph, pool: object = None, capture_error_mode: str = "global") -> Iterator[None]:
        captures.append({"mode": capture_error_mode, "locked": ours.engine._lock.locked()})
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    return ours, captures


def test_warmup_captures_every_bucket_under_the_lock_in_thread_local_mode(
    graphed: tuple[Reranker, list[dict[str, Any]]],
) -> None:
    ours, captures = graphed
    graphs = ours.engine._graphs
    assert graphs is not None
    ours.engine.warmup()
    assert sorted(graphs._graphs) == graphs.buckets(256, 256) and len(captures) == len(graphs._graphs)
    assert captures == [{"mode": "thread_local", "locked": True}] * len(captures)
    for n in (1, 2, 5, 24):
        ours.score("q", DOCS[:n])
    assert len(captures) == len(graphs._graphs), "a request after the warm-up captured a graph"


def test_concurrent_first_requests_capture_each_bucket_once_under_the_lock(
    graphed: tuple[Reranker, list[dict[str, Any]]],
) -> None:
    ours, captures = graphed
    work = [("q", DOCS[: 1 + i % 12]) for i in range(24)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda request: ours.score(*request), work))
    graphs = ours.engine._graphs
    assert graphs is not None and len(captures) == len(graphs._graphs) >= 3  # each bucket exactly once
    assert captures == [{"mode": "thread_local", "locked": True}] * len(captures)


def test_concurrent_callers_get_the_results_of_serial_calls(reranker: Reranker, embedder: Embedder) -> None:
    """Scores and embeddings from several threads at once (their post-processing overlaps other forwards)."""
    queries = [f"query {i}" for i in range(8)]
    expected_scores = [reranker.score(q, DOCS[i : i + 5]) for i, q in enumerate(queries)]
    expected_vectors = [embedder.embed(DOCS[i : i + 3], dim=32) for i in range(8)]

    def call(i: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = embedder.embed_batch([EmbedRequest(DOCS[i : i + 3], None, 32, True)])[0]
        return reranker.score(queries[i], DOCS[i : i + 5]), vectors

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, range(8)))
    for (scores, vectors), want_scores, want_vectors in zip(results, expected_scores, expected_vectors):
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(vectors, want_vectors, rtol=0, atol=1e-6)


def test_warmup_is_off_on_cpu_by_default_and_runs_both_kernel_variants(
    reranker_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert EngineOptions.validate("cpu", None, 256, 512).warmup is False
    with pytest.raises(TypeError, match="warmup must be a bool, got int"):
        Reranker(reranker_dir, device="cpu", warmup=1)  # type: ignore[arg-type]
    forward, batches = Qwen3.forward, []

    def counting_forward(self: Qwen3, batch: Any) -> torch.Tensor:
        batches.append(batch)
        return forward(self, batch)

    monkeypatch.setattr(Qwen3, "forward", counting_forward)
    # backend="torch": the fused CPU ops compile themselves at construction, whatever `warmup` says
    Reranker(reranker_dir, device="cpu", max_length=256, backend="torch")
    assert batches == []
    Reranker(reranker_dir, device="cpu", max_length=256, backend="torch", warmup=True)
    assert [batch.prefix_lens is not None for batch in batches] == [False, True]
