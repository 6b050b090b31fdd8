"""Engine mechanics that keep results exact: pipelined tokenization, out-of-memory splitting, CUDA-graph padding."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from qrerank import Embedder, Reranker
from qrerank.batching import Part, pack, split_parts
from qrerank.cuda_graphs import CudaGraphs
from qrerank.engine import chunk_groups

TEXTS = [f"passage {i}: " + "word " * (i % 23) for i in range(40)]


@pytest.mark.parametrize(
    ("sizes", "chunk", "expected"),
    [
        ([], 4, []),
        ([0, 0], 4, []),
        ([3], 4, [[(0, 0, 3)]]),
        ([3, 0, 2], 4, [[(0, 0, 3), (2, 0, 1)], [(2, 1, 2)]]),
        ([9], 4, [[(0, 0, 4)], [(0, 4, 8)], [(0, 8, 9)]]),
        ([4, 4], 4, [[(0, 0, 4)], [(1, 0, 4)]]),
    ],
)
def test_chunk_groups(sizes: list[int], chunk: int, expected: list[list[tuple[int, int, int]]]) -> None:
    assert chunk_groups(sizes, chunk) == expected


def test_pipelined_chunks_equal_one_run(embedder: Embedder) -> None:
    instruction = "Find the passage"
    groups = [embedder.prompt.encode(TEXTS[:25], instruction), embedder.prompt.encode(TEXTS[25:], None)]
    whole = embedder.engine.run(groups)

    def encode(chunk: list[tuple[int, int, int]]) -> list[list[list[int]]]:
        return [groups[g][a:b] for g, a, b in chunk]

    chunks = [partial(encode, c) for c in chunk_groups([25, 15], 7)]
    assert len(chunks) == 6
    torch.testing.assert_close(
        embedder.engine.run_pipelined(chunks), whole, rtol=1e-5, atol=1e-5
    )  # raw states, not unit
    assert embedder.engine.run_pipelined([]).shape == (0, 64)


def test_split_parts_halves_the_outputs_and_keeps_prefixes() -> None:
    parts = [Part(np.array([4, 2, 7]), 5), Part(np.array([0]), 0), Part(np.array([1, 3]), 2)]
    first, second = split_parts(parts)
    assert [(p.members.tolist(), p.prefix_len) for p in first] == [([4, 2, 7], 5)]
    assert [(p.members.tolist(), p.prefix_len) for p in second] == [([0], 0), ([1, 3], 2)]
    first, second = split_parts([Part(np.array([8, 9, 10, 11, 12]), 3)])
    assert [p.members.tolist() for p in first] == [[8, 9]] and [p.members.tolist() for p in second] == [[10, 11, 12]]


@pytest.fixture
def oom_reranker(reranker_dir: Path) -> Reranker:
    return Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256)


def test_a_batch_that_does_not_fit_is_split(
    oom_reranker: Reranker, reranker: Reranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A simulated device that runs out of memory above 150 tokens: results are unchanged, not an error."""
    model = oom_reranker.engine.model
    forward, seen = model.forward, []

    def small_device_forward(batch):
        seen.append(batch.input_ids.numel())
        if batch.input_ids.numel() > 150:
            raise torch.OutOfMemoryError("simulated")
        return forward(batch)

    monkeypatch.setattr(model, "forward", small_device_forward)
    docs = TEXTS[:12]
    got = oom_reranker.score("a query", docs)
    assert max(seen) > 150 and len(seen) > 3  # it did fail, then ran halves
    np.testing.assert_allclose(got, reranker.score("a query", docs), rtol=0, atol=1e-5)
    with pytest.raises(torch.OutOfMemoryError, match=r"a single sequence of \d+ tokens does not fit"):
        oom_reranker.score("a query", ["word " * 200])


@pytest.mark.parametrize(("tokens", "seqs"), [(1, 1), (127, 3), (128, 1), (129, 2), (2048, 40)])
def test_graph_buckets_fit_the_batch_and_its_padding(tokens: int, seqs: int) -> None:
    graphs = CudaGraphs(model=None, max_tokens=2048)  # type: ignore[arg-type]
    bucket = graphs.bucket(tokens, seqs)
    assert bucket is not None
    padded_tokens, padded_seqs = bucket
    assert padded_tokens % 128 == 0 and tokens <= padded_tokens < tokens + 128
    assert padded_seqs >= seqs + (padded_tokens > tokens) and padded_seqs & (padded_seqs - 1) == 0
    assert graphs.bucket(2049, 1) is None


@pytest.mark.parametrize(("spare_tokens", "spare_seqs"), [(0, 0), (0, 3), (1, 1), (57, 4)])
def test_padded_batch_gives_the_same_states(reranker: Reranker, spare_tokens: int, spare_seqs: int) -> None:
    """What a CUDA-graph replay computes: the batch padded to its bucket, outputs read from the first rows."""
    docs = ["short", "a longer document about capitals", "x"]
    sequences = reranker.prompt.encode([("q", d) for d in docs], None)
    prefix = 40
    parts = [Part(np.array([2, 0]), prefix), Part(np.array([1]), 0)]
    model = reranker.engine.model
    plain_batch = pack(sequences, parts, torch.device("cpu"))
    plain = model.forward(plain_batch)
    pad_to = (plain_batch.input_ids.numel() + spare_tokens, plain_batch.cu_seqlens.numel() - 1 + spare_seqs)
    padded_batch = pack(sequences, parts, torch.device("cpu"), pad_to=pad_to)
    assert padded_batch.input_ids.numel() == pad_to[0] and padded_batch.cu_seqlens.numel() == pad_to[1] + 1
    assert padded_batch.cu_seqlens[-1].item() == pad_to[0]
    padded = model.forward(padded_batch)
    assert padded.shape[0] == pad_to[1]
    torch.testing.assert_close(padded[:3], plain, rtol=1e-5, atol=1e-5)  # raw states, not unit vectors


def test_cuda_graphs_option_is_validated(reranker_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"cuda_graphs=True needs a CUDA device and backend='triton'"):
        Reranker(reranker_dir, device="cpu", cuda_graphs=True)
    with pytest.raises(TypeError, match=r"cuda_graphs must be a bool, got int"):
        Reranker(reranker_dir, device="cpu", cuda_graphs=1)  # type: ignore[arg-type]
    assert Reranker(reranker_dir, device="cpu").engine.options.cuda_graphs is False
