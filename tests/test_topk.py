"""qrerank.topk on the CPU (the torch path) against a brute-force numpy reference; every bad input."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from qrerank.similarity import decode_keys, score_keys, topk

# the module, not the function that qrerank/__init__.py exports under the same name
topk_module = importlib.import_module("qrerank.similarity")


def reference(queries: torch.Tensor, corpus: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores in float64 of the given (already rounded) inputs, rows by a stable sort of -score."""
    scores = queries.double().numpy() @ corpus.double().numpy().T  # [m, n]
    rows = np.arange(corpus.shape[0])
    order = np.stack([np.lexsort((rows, -s))[:k] for s in scores]) if len(scores) else np.empty((0, k), np.int64)
    return np.take_along_axis(scores, order, axis=1), order


def assert_topk_close(
    scores: torch.Tensor, indices: torch.Tensor, queries: torch.Tensor, corpus: torch.Tensor, tol: float
) -> None:
    """Each returned score is within tol of the exact score of the row it names, that row's exact score is
    within tol of the exact score at its rank, and no row repeats: rows may differ only inside near-ties."""
    scores, indices = scores.cpu(), indices.cpu()
    exact = queries.cpu().double() @ corpus.cpu().double().T  # [m, n]
    ref_scores, _ = reference(queries.cpu(), corpus.cpu(), indices.shape[1])
    named = torch.gather(exact, 1, indices)
    np.testing.assert_allclose(scores.double().numpy(), named.numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(named.numpy(), ref_scores, rtol=0, atol=tol)
    for row in indices:
        assert len(set(row.tolist())) == len(row), "a corpus row is returned twice"


def integers(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Small integers: every product and sum is exact in fp32, and many scores tie."""
    return torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("m", "n", "d", "k"), [(1, 1, 1, 1), (3, 7, 5, 7), (5, 300, 8, 1), (17, 1000, 33, 10), (4, 2500, 16, 1024)]
)
def test_exact_with_ties(m: int, n: int, d: int, k: int, dtype: torch.dtype) -> None:
    queries, corpus = integers((m, d), dtype, 1), integers((n, d), dtype, 2)
    scores, indices = topk(queries, corpus, k)
    ref_scores, ref_rows = reference(queries, corpus, k)
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64
    assert scores.shape == indices.shape == (m, min(k, n))
    np.testing.assert_array_equal(indices.numpy(), ref_rows)
    np.testing.assert_array_equal(scores.numpy(), ref_scores.astype(np.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normal_data_within_rounding(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    queries = (torch.randn(9, 64, generator=generator) / 8).to(dtype)
    corpus = (torch.randn(4000, 64, generator=generator) / 8).to(dtype)
    scores, indices = topk(queries, corpus, 100)
    assert_topk_close(scores, indices, queries, corpus, tol=1e-5)


def test_chunked_merge_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    queries, corpus = integers((11, 6), torch.float32, 4), integers((3000, 6), torch.float32, 5)
    whole = topk(queries, corpus, 300)
    monkeypatch.setattr(topk_module, "_CHUNK_ELEMENTS", 700)  # 256-row corpus chunks
    monkeypatch.setattr(topk_module, "_QUERY_CHUNK", 4)
    chunked = topk(queries, corpus, 300)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_numpy_in_numpy_out() -> None:
    queries = integers((4, 8), torch.float32, 6).numpy()
    corpus = integers((50, 8), torch.float32, 7).numpy()[:, ::-1]  # a non-contiguous view
    scores, indices = topk(queries, corpus, 5)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, reference(torch.from_numpy(queries), torch.from_numpy(corpus.copy()), 5)[1])


def test_strided_and_transposed_inputs() -> None:
    base = integers((30, 12), torch.float16, 8)
    corpus = base[:, :7]  # rows 12 elements apart
    queries = integers((7, 3), torch.float16, 9).T  # column-major
    _, indices = topk(queries, corpus, 9)
    np.testing.assert_array_equal(indices.numpy(), reference(queries, corpus, 9)[1])


def test_k_larger_than_corpus_is_clamped_and_empty_inputs() -> None:
    queries = integers((2, 4), torch.float32, 10)
    scores, indices = topk(queries, integers((3, 4), torch.float32, 11), 10)
    assert scores.shape == indices.shape == (2, 3)
    scores, indices = topk(queries, torch.empty(0, 4), 10)
    assert scores.shape == indices.shape == (2, 0)
    scores, indices = topk(torch.empty(0, 4), integers((3, 4), torch.float32, 11), 2)
    assert scores.shape == indices.shape == (0, 2)


def test_negative_zero_ties_with_zero() -> None:
    queries = torch.tensor([[-1.0]])
    corpus = torch.tensor([[0.0], [-0.0], [0.0], [-1.0]])  # scores -0, +0, -0, 1
    scores, indices = topk(queries, corpus, 4)
    assert indices.tolist() == [[3, 0, 1, 2]]
    assert scores.tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_keys_round_trip_special_values() -> None:
    values = torch.tensor([[float("-inf"), -2.5, -0.0, 0.0, 1e-38, 3.0, float("inf"), float("nan")]])
    keys = score_keys(values, row0=5)
    scores, rows = decode_keys(keys)
    assert rows.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12]]
    assert torch.equal(scores[:, :7], torch.where(values[:, :7] == 0, 0.0, values[:, :7]))
    assert torch.isnan(scores[0, 7])
    order = keys[0].argsort(descending=True).tolist()
    assert order == [6, 5, 4, 2, 3, 1, 0, 7]  # +0 and -0 tie (lower row first); NaN last


ONE = torch.ones(2, 4)
BAD_CALLS: list[Any] = [
    pytest.param(lambda: topk(ONE, ONE, 0), ValueError, r"k must be between 1 and 1024, got 0", id="k-zero"),
    pytest.param(lambda: topk(ONE, ONE, 1025), ValueError, r"k must be between 1 and 1024, got 1025", id="k-big"),
    pytest.param(lambda: topk(ONE, ONE, 2.0), TypeError, r"k must be an int, got float", id="k-float"),
    pytest.param(lambda: topk(ONE, ONE, True), TypeError, r"k must be an int, got bool", id="k-bool"),
    pytest.param(lambda: topk([[1.0]], ONE, 1), TypeError, r"queries must be a torch.Tensor or numpy", id="list"),
    pytest.param(lambda: topk(ONE, None, 1), TypeError, r"corpus must be a torch.Tensor .* got NoneType", id="none"),
    pytest.param(lambda: topk(torch.ones(4), ONE, 1), ValueError, r"queries must be 2-D .* got shape \(4,\)", id="1d"),
    pytest.param(lambda: topk(ONE, torch.ones(2, 0), 1), ValueError, r"corpus must have at least one col", id="d0"),
    pytest.param(
        lambda: topk(ONE, torch.ones(3, 5), 1),
        ValueError,
        r"same dimension, got queries \(2, 4\) and corpus \(3, 5\)",
        id="dim-mismatch",
    ),
    pytest.param(
        lambda: topk(ONE, ONE.half(), 1),
        ValueError,
        r"one dtype, got queries torch.float32 and corpus torch.float16",
        id="dtype-mismatch",
    ),
    pytest.param(
        lambda: topk(ONE, ONE.to("meta"), 1), ValueError, r"one device, got queries on cpu and corpus on meta", id="dev"
    ),
    pytest.param(lambda: topk(ONE.double(), ONE, 1), ValueError, r"queries dtype torch.float64 is not supp", id="f64"),
    pytest.param(lambda: topk(ONE.int(), ONE, 1), ValueError, r"queries dtype torch.int32 is not supported", id="int"),
    pytest.param(
        lambda: topk(np.ones((2, 4)), np.ones((2, 4)), 1), ValueError, r"queries dtype float64 is not supp", id="np64"
    ),
    pytest.param(
        lambda: topk(torch.tensor([[1.0, float("nan")]]), torch.ones(3, 2), 1),
        ValueError,
        r"queries contains NaN",
        id="nan-queries",
    ),
    pytest.param(
        lambda: topk(torch.ones(1, 2), torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), 1),
        ValueError,
        r"corpus contains NaN",
        id="nan-corpus",
    ),
    pytest.param(
        lambda: topk(torch.ones(1, 2), torch.tensor([[float("inf"), 1.0]]), 1),
        ValueError,
        r"corpus contains an infinite value",
        id="inf-corpus",
    ),
    pytest.param(lambda: topk(ONE, ONE, 1, backend="cuda"), ValueError, r"backend='cuda' needs CUDA", id="cuda-cpu"),
    pytest.param(lambda: topk(ONE, ONE, 1, backend="numpy"), ValueError, r"backend 'numpy' is not one of", id="be"),
    pytest.param(lambda: topk(ONE, ONE, 1, backend=1), TypeError, r"backend must be a str, got int", id="be-int"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_bad_input(call: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()
