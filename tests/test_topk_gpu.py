"""The CUDA top-k kernel against qrerank.topk's torch path on the same GPU (skipped without CUDA).

The issue's matrix: m in {1, 7, 64, 1000, 2048}, n in {1, 1000, 1000003}, d in {64, 1024, 4096},
k in {1, 10, 100, 1024}, float32 / bfloat16 / float16. Every combination runs for n <= 1000; for the
1M-row corpus a sample covers each value of m, d and k in each dtype (about a minute on an H100 in all).
Integer-valued data must match bit for bit (ties by row); normal data up to rounding (see check()).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from qrerank.similarity import kernel_available, topk

pytestmark = pytest.mark.gpu

MS, KS, DS = (1, 7, 64, 1000, 2048), (1, 10, 100, 1024), (64, 1024, 4096)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BIG_N = 1_000_003
BIG = {  # (m, d, k) per dtype for n = 1,000,003: each m, d and k at least once per dtype
    torch.bfloat16: [(1, 1024, 1024), (64, 64, 10), (2048, 1024, 100), (7, 4096, 1), (1000, 64, 1024)],
    torch.float16: [(1000, 1024, 10), (7, 64, 100), (64, 4096, 1024), (1, 1024, 1), (2048, 64, 10)],
    torch.float32: [(2048, 64, 1), (1, 4096, 10), (64, 1024, 1024), (7, 1024, 100), (1000, 64, 10)],
}


def make(rows: int, d: int, dtype: torch.dtype, integers: bool, seed: int) -> torch.Tensor:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    if integers:  # products and sums exact in fp32: the kernel must equal the torch path exactly
        return torch.randint(-2, 3, (rows, d), generator=generator, device="cuda", dtype=torch.int8).to(dtype)
    return torch.randn(rows, d, generator=generator, device="cuda", dtype=dtype).div_(d**0.5)


def exact_scores(queries: torch.Tensor, corpus: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """float64 scores of the named rows [m, k], a few queries at a time."""
    out = torch.empty(rows.shape, dtype=torch.float64, device=rows.device)
    step = max(1, (1 << 24) // (rows.shape[1] * queries.shape[1]))
    for i in range(0, queries.shape[0], step):
        picked = corpus[rows[i : i + step]].double()  # [s, k, d]
        out[i : i + step] = torch.einsum("skd,sd->sk", picked, queries[i : i + step].double())
    return out


def check(queries: torch.Tensor, corpus: torch.Tensor, k: int, integers: bool, label: str) -> None:
    scores, rows = topk(queries, corpus, k, backend="cuda")
    ref_scores, ref_rows = topk(queries, corpus, k, backend="torch")
    k = min(k, corpus.shape[0])
    assert scores.shape == rows.shape == (queries.shape[0], k), label
    if integers:
        assert torch.equal(rows, ref_rows), label
        assert torch.equal(scores, ref_scores), label
        return
    # Normal data: fp32 sums in another order differ in the last bits, so the scores at each rank agree
    # within tol, each returned score is within tol of the exact score of the row it names, rows are
    # distinct, and equal returned scores come in ascending row order; rows may differ only in near-ties.
    tol = 2e-6 * queries.shape[1] ** 0.5
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=tol, msg=label)
    torch.testing.assert_close(exact_scores(queries, corpus, rows).float(), scores, rtol=0, atol=tol, msg=label)
    assert bool(((rows >= 0) & (rows < corpus.shape[0])).all()), label
    assert bool((rows.sort(dim=1).values.diff(dim=1) != 0).all()), f"{label}: a row returned twice"
    assert bool((scores.diff(dim=1) <= 0).all()), f"{label}: not best first"
    tied = scores[:, 1:] == scores[:, :-1]
    assert bool((rows[:, 1:] > rows[:, :-1])[tied].all()), f"{label}: equal scores out of row order"


def test_kernel_is_built() -> None:
    assert kernel_available(), "qrerank._topk is not built: reinstall with a CUDA toolkit (pip install -e .)"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 1000])
def test_small_corpora_full_matrix(n: int, dtype: torch.dtype) -> None:
    for d, integers in itertools.product(DS, (True, False)):
        queries, corpus = make(max(MS), d, dtype, integers, 1), make(n, d, dtype, integers, 2)
        for m, k in itertools.product(MS, KS):
            check(queries[:m], corpus, k, integers, f"m={m} n={n} d={d} k={k} {dtype} integers={integers}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_million_row_corpus(dtype: torch.dtype) -> None:
    for d in DS:
        cases = [(m, k) for m, dd, k in BIG[dtype] if dd == d]
        if not cases:
            continue
        integers = d != 1024  # d = 1024 runs on normal data, the other widths exactly
        corpus = make(BIG_N, d, dtype, integers, 3)
        queries = make(max(m for m, _ in cases), d, dtype, integers, 4)
        for m, k in cases:
            check(queries[:m], corpus, k, integers, f"m={m} n={BIG_N} d={d} k={k} {dtype} integers={integers}")
        del corpus
        torch.cuda.empty_cache()


def test_odd_layouts_and_current_stream() -> None:
    base = make(3000, 112, torch.bfloat16, True, 5)
    corpus = base[:, :100]  # d = 100: rows 224 bytes apart (aligned), no copy
    queries = make(40, 104, torch.bfloat16, True, 6)[:, 3:103]  # misaligned start: padded copy
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the inputs were made on the default stream
    with torch.cuda.stream(stream):
        scores, rows = topk(queries, corpus, 50, backend="cuda")
    stream.synchronize()
    ref_scores, ref_rows = topk(queries, corpus, 50, backend="torch")
    assert torch.equal(rows, ref_rows) and torch.equal(scores, ref_scores)


def test_ties_everywhere() -> None:
    corpus = torch.ones(5000, 64, device="cuda", dtype=torch.float16)  # every score ties
    queries = torch.ones(3, 64, device="cuda", dtype=torch.float16)
    _, rows = topk(queries, corpus, 1024, backend="cuda")
    assert torch.equal(rows, torch.arange(1024, device="cuda").expand(3, -1))
    ascending = (torch.arange(5000, device="cuda", dtype=torch.float32) / 5000)[:, None].expand(-1, 8).contiguous()
    scores, rows = topk(torch.ones(2, 8, device="cuda"), ascending, 1024, backend="cuda")  # every score beats the last
    ref = topk(torch.ones(2, 8, device="cuda"), ascending, 1024, backend="torch")
    assert torch.equal(rows, ref[1]) and torch.equal(scores, ref[0])
