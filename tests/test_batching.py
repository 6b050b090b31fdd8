"""plan_batches / pack invariants, and packing invariance of scores and embeddings end to end."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from qrerank import Embedder, Reranker
from qrerank.batching import Part, pack, plan_batches, shared_prefix_len

CPU = torch.device("cpu")


def _random_lengths(seed: int, n: int, high: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, high, size=n, dtype=np.int64)


PLAN_CASES = [
    pytest.param(_random_lengths(0, 200, 300), 512, id="random"),
    pytest.param(_random_lengths(1, 64, 40), 64, id="many-ties"),
    pytest.param(np.array([5, 700, 3, 300, 300, 1000, 2, 299], dtype=np.int64), 300, id="over-long"),
    pytest.param(np.array([7, 7, 7, 7], dtype=np.int64), 7, id="exact-fit"),
    pytest.param(np.array([1], dtype=np.int64), 1, id="single"),
    pytest.param(_random_lengths(2, 50, 20), 1, id="budget-below-every-length"),
]


def _plan_one_group(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    plan = plan_batches(lengths, [np.arange(len(lengths))], [0], budget)
    assert all(len(parts) == 1 and parts[0].prefix_len == 0 for parts in plan)
    return [parts[0].members for parts in plan]


@pytest.mark.parametrize(("lengths", "budget"), PLAN_CASES)
def test_plan_batches_invariants(lengths: np.ndarray, budget: int) -> None:
    batches = _plan_one_group(lengths, budget)
    assert all(len(b) > 0 and b.dtype == np.int64 for b in batches)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every index exactly once
    assert np.all(np.diff(lengths[flat]) <= 0)  # sorted by length (longest first) across the plan
    for batch in batches:
        tokens = int(lengths[batch].sum())
        assert tokens <= budget or len(batch) == 1, (batch, tokens)
    for current, following in pairwise(batches):
        # greedy: a batch is closed only when the next sequence would not fit
        assert int(lengths[current].sum()) + int(lengths[following[0]]) > budget


def test_plan_batches_over_long_sequences_run_alone() -> None:
    lengths = np.array([10, 500, 20, 400, 30], dtype=np.int64)
    assert [b.tolist() for b in _plan_one_group(lengths, 100)] == [[1], [3], [4, 2, 0]]


def test_plan_batches_empty() -> None:
    assert plan_batches(np.zeros(0, dtype=np.int64), [np.zeros(0, dtype=np.int64)], [0], 16) == []
    assert plan_batches(np.zeros(0, dtype=np.int64), [], [], 16) == []


@pytest.mark.parametrize("budget", [1, 40, 100, 1000])
def test_plan_batches_counts_each_parts_prefix_once(budget: int) -> None:
    rng = np.random.default_rng(9)
    sizes, prefixes = [5, 1, 12, 3, 0, 8], [20, 0, 7, 1, 0, 30]
    groups = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])
    lengths = np.concatenate([p + rng.integers(1, 40, size=n) for p, n in zip(prefixes, sizes)])
    plan = plan_batches(lengths, groups, prefixes, budget)
    seen = [part.members for parts in plan for part in parts]
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(lengths)))
    owner = np.repeat(np.arange(len(sizes)), sizes)
    assert [int(owner[m[0]]) for m in seen] == sorted(int(owner[m[0]]) for m in seen)  # groups stay in order
    for parts in plan:
        assert all(np.all(owner[part.members] == owner[part.members[0]]) for part in parts)  # a part is one group
        assert all(part.prefix_len == prefixes[owner[part.members[0]]] for part in parts)
        tokens = sum(part.prefix_len + int((lengths[part.members] - part.prefix_len).sum()) for part in parts)
        assert tokens <= budget or (len(parts) == 1 and len(parts[0].members) == 1), (parts, tokens)


@pytest.mark.parametrize(
    ("sequences", "expected"),
    [
        ([], 0),
        ([[1, 2, 3]], 0),  # nothing to share with
        ([[1, 2, 3], [1, 2, 4]], 2),
        ([[1, 2, 3], [1, 2, 3]], 2),  # identical: each keeps its final token
        ([[1, 2], [1, 2, 3, 4], [1, 2, 3]], 1),  # one is a prefix of the others
        ([[5, 2, 3], [1, 2, 3], [1, 2, 3, 9]], 0),
        ([[7], [7, 7]], 0),
        ([[1, 2, 3, 4, 5], [1, 2, 3, 9, 5], [1, 2, 8, 4, 5], [1, 2, 3, 4, 6]], 2),  # the minimum over all pairs
    ],
)
def test_shared_prefix_len(sequences: list[list[int]], expected: int) -> None:
    assert shared_prefix_len(sequences) == expected


def test_pack_layout() -> None:
    rng = np.random.default_rng(3)
    sequences = [rng.integers(0, 151669, size=n).tolist() for n in (4, 1, 9, 3, 6, 2)]
    indices = np.array([2, 0, 5, 1], dtype=np.int64)
    batch = pack(sequences, [Part(indices, 0)], CPU)
    chosen = [sequences[i] for i in indices]
    assert batch.input_ids.dtype == torch.int64
    assert batch.positions.dtype == torch.int64
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.input_ids.tolist() == [tok for seq in chosen for tok in seq]
    assert batch.positions.tolist() == [p for seq in chosen for p in range(len(seq))]
    assert batch.cu_seqlens.tolist() == [0, 9, 13, 15, 16]
    assert batch.last_tokens.tolist() == [8, 12, 14, 15]
    assert batch.max_seqlen == 9
    assert batch.prefix_offsets is None and batch.prefix_lens is None
    assert batch.indices.tolist() == batch.rows.tolist() == indices.tolist()


def test_pack_shared_prefix_layout() -> None:
    prefix = [11, 12, 13]
    sequences = [[*prefix, 1, 2], [9], [*prefix, 3], [*prefix, 4, 5, 6], [8, 7]]
    batch = pack(sequences, [Part(np.array([3, 0, 2]), 3), Part(np.array([4, 1]), 0)], CPU)
    assert batch.input_ids.tolist() == [11, 12, 13, 4, 5, 6, 1, 2, 3, 8, 7, 9]
    assert batch.positions.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 3, 0, 1, 0]
    assert batch.cu_seqlens.tolist() == [0, 3, 6, 8, 9, 11, 12]
    assert batch.prefix_offsets is not None and batch.prefix_lens is not None
    assert batch.prefix_offsets.tolist() == [0, 0, 0, 0, 0, 0]
    assert batch.prefix_lens.tolist() == [0, 3, 3, 3, 0, 0]
    assert batch.last_tokens.tolist() == [5, 7, 8, 10, 11]  # the prefix sequence has no output
    assert batch.indices.tolist() == [3, 0, 2, 4, 1]
    assert batch.max_seqlen == 3


def test_pack_every_planned_batch_reassembles_the_input() -> None:
    rng = np.random.default_rng(4)
    prefixes = [rng.integers(0, 1000, size=n).tolist() for n in (0, 5, 17)]
    sequences, groups, shared = [], [], []
    for prefix in prefixes:
        members = [prefix + rng.integers(0, 1000, size=n).tolist() for n in rng.integers(1, 60, size=15)]
        groups.append(np.arange(len(sequences), len(sequences) + len(members)))
        shared.append(shared_prefix_len(members))
        sequences += members
    assert shared[1] >= 5 and shared[2] >= 17
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    seen: dict[int, list[int]] = {}
    for parts in plan_batches(lengths, groups, shared, 100):
        batch = pack(sequences, parts, CPU)
        bounds = batch.cu_seqlens.tolist()
        assert bounds[0] == 0 and bounds[-1] == batch.input_ids.numel() == batch.positions.numel()
        assert batch.max_seqlen == max(b - a for a, b in pairwise(bounds))
        ids, positions = batch.input_ids.tolist(), batch.positions.tolist()
        offsets = batch.prefix_offsets.tolist() if batch.prefix_offsets is not None else [0] * (len(bounds) - 1)
        lens = batch.prefix_lens.tolist() if batch.prefix_lens is not None else [0] * (len(bounds) - 1)
        ends = {end - 1: s for s, (_, end) in enumerate(pairwise(bounds))}
        for index, last in zip(batch.indices.tolist(), batch.last_tokens.tolist(), strict=True):
            s = ends[last]
            start, end = bounds[s], bounds[s + 1]
            seen[index] = ids[offsets[s] : offsets[s] + lens[s]] + ids[start:end]
            assert positions[start:end] == list(range(lens[s], lens[s] + end - start))
    assert seen == dict(enumerate(sequences))


def test_every_packed_tensor_is_16_byte_aligned() -> None:
    """Triton compiles a kernel variant per pointer alignment: an unaligned slice would stall serving on a compile."""
    rng = np.random.default_rng(5)
    for seqs in range(1, 14):
        for prefix in (0, 1, 2, 3):
            lengths = rng.integers(1, 9, size=seqs) + prefix
            sequences = [[7] * prefix + rng.integers(0, 1000, size=n - prefix).tolist() for n in lengths]
            parts = [Part(np.arange(seqs), shared_prefix_len(sequences) if prefix else 0)]
            tokens = sum(map(len, sequences)) - parts[0].prefix_len * (seqs - 1)
            for pad_to in (None, (tokens + int(rng.integers(0, 3)), seqs + 1 + int(rng.integers(1, 5)))):
                batch = pack(sequences, parts, CPU, pad_to)
                for field in (
                    "input_ids",
                    "positions",
                    "cu_seqlens",
                    "prefix_offsets",
                    "prefix_lens",
                    "last_tokens",
                    "rows",
                ):
                    tensor = getattr(batch, field)
                    if tensor is not None:
                        assert tensor.data_ptr() % 16 == 0, (field, seqs, prefix, pad_to, tensor.storage_offset())


def test_padding_tokens_sit_at_position_0() -> None:
    """A padding sequence may be longer than max_length (a graph captured from a 1-token batch); its
    positions index the RoPE table, so they must stay in range."""
    batch = pack([[5, 6, 7]], [Part(np.array([0]), 0)], CPU, pad_to=(512, 8))
    assert batch.positions.tolist() == [0, 1, 2] + [0] * 509
    assert batch.input_ids.tolist() == [5, 6, 7] + [0] * 509


def _mixed_texts(seed: int, n: int, max_words: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "retrieval", "qwen", "pack", "Tokyo", "的", "🙂", "x9", "\n", "déjà"]
    return [" ".join(rng.choice(words, size=int(rng.integers(0, max_words)))) for _ in range(n)]


@pytest.fixture(scope="module")
def small_batch_reranker(reranker_dir: Path) -> Reranker:
    return Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=300)


@pytest.fixture(scope="module")
def small_batch_embedder(embedding_dir: Path) -> Embedder:
    return Embedder(embedding_dir, device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=100)


def test_reranker_scores_do_not_depend_on_packing(small_batch_reranker: Reranker, reranker: Reranker) -> None:
    queries = ["what is qwen", "capital of Japan", "packing"]
    docs = _mixed_texts(5, 50, 180)
    pairs = [(queries[i % 3], doc) for i, doc in enumerate(docs)]
    lengths = np.array([len(s) for s in small_batch_reranker.prompt.encode(pairs, None)], dtype=np.int64)
    plan = _plan_one_group(lengths, 300)
    assert len(plan) >= 5 and max(map(len, plan)) >= 3 and lengths.min() < 100 and lengths.max() == 256

    batched = small_batch_reranker.score_pairs(pairs)
    alone = np.array([small_batch_reranker.score_pairs([pair])[0] for pair in pairs])
    assert batched.dtype == np.float32 and batched.shape == (50,)
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-6)
    np.testing.assert_allclose(reranker.score_pairs(pairs), batched, rtol=0, atol=1e-6)  # other budget

    perm = np.random.default_rng(6).permutation(50)
    shuffled = small_batch_reranker.score_pairs([pairs[i] for i in perm])
    np.testing.assert_allclose(shuffled, batched[perm], rtol=0, atol=1e-6)
    assert np.ptp(batched) > 1e-3  # the order check above would be vacuous on constant scores


def test_embeddings_do_not_depend_on_packing(small_batch_embedder: Embedder, embedder: Embedder) -> None:
    texts = _mixed_texts(7, 50, 120)
    lengths = np.array([len(s) for s in small_batch_embedder.prompt.encode(texts, None)], dtype=np.int64)
    plan = _plan_one_group(lengths, 100)
    assert len(plan) >= 5 and max(map(len, plan)) >= 3 and lengths.max() > 100  # some run alone, over budget

    batched = small_batch_embedder.embed(texts)
    alone = np.concatenate([small_batch_embedder.embed([text]) for text in texts])
    assert batched.dtype == np.float32 and batched.shape == (50, 64)
    assert np.abs(batched - alone).max() <= 1e-6
    assert np.abs(embedder.embed(texts) - batched).max() <= 1e-6  # other budget

    perm = np.random.default_rng(8).permutation(50)
    shuffled = small_batch_embedder.embed([texts[i] for i in perm])
    assert np.abs(shuffled - batched[perm]).max() <= 1e-6
    assert np.abs(batched[perm] - batched).max() > 1e-3  # the permutation really moved distinct rows
