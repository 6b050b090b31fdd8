"""The fused CPU ops (cpu_ops.py) against their torch twins, the workspace that holds their outputs, and when they
compile: at engine construction, never during a request, and not at all (eager fallback) without a C++ compiler."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qrerank import Reranker, reference
from qrerank.bench import corpus
from qrerank.cpu_attention import plan_for
from qrerank.cpu_ops import FusedCpuOps
from qrerank.workspace import Workspace

CPU = torch.device("cpu")
# (rtol, atol) against the same-dtype twin: the compiled loops keep intermediates in fp32 where the twin
# rounds to the activation dtype between steps, so bf16 results may differ by an ulp or two.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 3.2e-2)}
# One odd shape: hidden and intermediate sizes that are not multiples of a vector (loop tails), 3 query heads
# sharing 1 kv head, a head size of 24.
HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, EPS = 72, 50, 3, 1, 24, 1e-6
ROWS = (1, 37)  # torch specialises size 1: both compiled variants


@pytest.fixture(
    scope="module",
    params=[(torch.float32, False), (torch.bfloat16, True), (torch.bfloat16, False)],
    ids=["fp32", "bf16-amx", "bf16"],  # both bf16 attention plans, whatever this CPU has
)
def fused(request: pytest.FixtureRequest) -> FusedCpuOps:
    dtype, amx = request.param
    return FusedCpuOps(dtype, CPU, plan_for(dtype, amx))


def _randn(*shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape)).to(dtype)


def _assert_close(got: torch.Tensor, expected: torch.Tensor, tolerance: tuple[float, float] | None = None) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    rtol, atol = tolerance or TOLERANCE[expected.dtype]
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)


@torch.inference_mode()
def test_norms_match_their_twins(fused: FusedCpuOps) -> None:
    dtype = fused.workspace.dtype
    torch.manual_seed(0)
    weight = 1 + _randn(HIDDEN, dtype=dtype, scale=0.3)
    for rows in ROWS:
        x, residual = _randn(rows, HIDDEN, dtype=dtype, scale=2.0), _randn(rows, HIDDEN, dtype=dtype, scale=5.0)
        _assert_close(fused.rms_norm(x, weight, EPS), reference.rms_norm(x, weight, EPS))
        expected_norm, expected_sum = reference.add_rms_norm(x, residual, weight, EPS)
        normed, summed = fused.add_rms_norm(x, residual, weight, EPS)
        _assert_close(normed, expected_norm)
        torch.testing.assert_close(summed, expected_sum, rtol=0, atol=0)  # one rounding, as the twin
        # The next call writes the sum into the other residual buffer, never over its own input.
        again, summed_again = fused.add_rms_norm(x, summed, weight, EPS)
        assert summed_again.data_ptr() != summed.data_ptr()
        _assert_close(again, reference.add_rms_norm(x, expected_sum, weight, EPS)[0])


@torch.inference_mode()
def test_qk_norm_rope_matches_its_twin(fused: FusedCpuOps) -> None:
    dtype = fused.workspace.dtype
    torch.manual_seed(1)
    q_w, k_w = 1 + _randn(HEAD_DIM, dtype=dtype, scale=0.2), 1 + _randn(HEAD_DIM, dtype=dtype, scale=0.2)
    rope = reference.rope_cache(HEAD_DIM, 1e6, 512, CPU)
    for rows in ROWS:
        qkv = _randn(rows, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=dtype)
        positions = torch.randint(0, 512, (rows,))
        got = fused.qk_norm_rope(qkv, q_w, k_w, rope, positions, HEADS, KV_HEADS, EPS)
        expected = reference.qk_norm_rope(qkv, q_w, k_w, rope, positions, HEADS, KV_HEADS, EPS)
        for g, e in zip(got, expected, strict=True):
            _assert_close(g, e)
        assert got[2].data_ptr() == expected[2].data_ptr()  # v stays a view of qkv, as in the twin


@torch.inference_mode()
def test_silu_mul_and_linear_match_their_twins(fused: FusedCpuOps) -> None:
    dtype = fused.workspace.dtype
    torch.manual_seed(2)
    weight = _randn(INTER, HIDDEN, dtype=dtype, scale=HIDDEN**-0.5)
    for rows in ROWS:
        gate_up = _randn(rows, 2 * INTER, dtype=dtype, scale=3.0)
        _assert_close(fused.silu_mul(gate_up), reference.silu_mul(gate_up))
        x = _randn(rows, HIDDEN, dtype=dtype)
        _assert_close(fused.linear(x, weight), F.linear(x, weight))


def _packed_attention(
    fused: FusedCpuOps, lengths: list[int], prefix_lens: list[int], scale: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """fused.attention and its twin on one packed batch (every prefix is sequence 0); `scale` per sequence
    sizes its keys and values, so that a key read across a sequence's end would show."""
    dtype = fused.workspace.dtype
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    t = sum(lengths)
    rows = torch.tensor(scale).repeat_interleave(torch.tensor(lengths))[:, None, None]  # [T, 1, 1]
    q = _randn(t, HEADS, HEAD_DIM, dtype=dtype)
    k, v = (rows * torch.randn(t, KV_HEADS, HEAD_DIM)).to(dtype), (rows * torch.randn(t, KV_HEADS, HEAD_DIM)).to(dtype)
    offsets = torch.zeros(len(lengths), dtype=torch.int32)
    lens = torch.tensor(prefix_lens, dtype=torch.int32)
    got = fused.attention(q, k, v, cu, max(lengths), HEAD_DIM**-0.5, offsets, lens)
    return got, reference.attention(q, k, v, cu, max(lengths), HEAD_DIM**-0.5, offsets, lens)


@torch.inference_mode()
def test_attention_matches_its_twin_after_shared_prefixes(fused: FusedCpuOps) -> None:
    torch.manual_seed(3)
    # packed: a 5-token prefix, two sequences that attend to it, an empty one, an unshared 3-token sequence
    got, expected = _packed_attention(fused, [5, 4, 1, 0, 3], [0, 5, 5, 0, 0], [1.0] * 5)
    if fused.workspace.dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the same SDPA calls, into a workspace buffer
    else:
        _assert_close(got, expected)  # SDPA over key counts rounded up to KEY_BLOCK with AMX, exact without


@torch.inference_mode()
def test_attention_keys_rounded_up_to_a_block_change_nothing(fused: FusedCpuOps) -> None:
    """The keys a bf16 sequence's queries compute with run on past its end: into the next sequences' (SDPA with
    AMX) or zeros (the GEMMs). Every other sequence's keys and values are scaled by 1e3: one key read across a
    sequence's end would swamp its neighbour's result. Each row is compared at its own sequence's scale: a
    1e3-scaled output is a mix of values of about 1e3, good to a few of their bf16 roundings."""
    torch.manual_seed(4)
    # the prefix, then counts below, at and past a multiple of 32, and past GEMM_MIN_KEYS
    lengths = [45, 33, 31, 1, 64, 70, 2, 95, 130]
    for prefix_len in (0, 45):
        prefix_lens = [0] + [prefix_len] * (len(lengths) - 1)
        scale = [1.0] + [1e3 if i % 2 else 1.0 for i in range(len(lengths) - 1)]
        got, expected = _packed_attention(fused, lengths, prefix_lens, scale)
        rows = torch.tensor(scale).repeat_interleave(torch.tensor(lengths))[:, None, None]  # [T, 1, 1]
        _assert_close(got.float() / rows, expected.float() / rows, TOLERANCE[fused.workspace.dtype])


def test_workspace_reuses_its_buffers_and_grows_once() -> None:
    ws = Workspace(torch.float32, CPU)
    first = ws.take("act", (4, 8))
    assert ws.take("act", (2, 3)).data_ptr() == first.data_ptr()  # smaller: the same memory
    grown = ws.take("act", (16, 8))
    assert grown.shape == (16, 8) and ws.nbytes == 16 * 8 * 4
    assert ws.take("act", (4, 8)).data_ptr() == grown.data_ptr()  # kept at its largest
    assert ws.take("other", (4, 8)).data_ptr() != grown.data_ptr()


def _large_allocations(reranker: Reranker, docs: list[str], threshold: int) -> int:
    """Ops that allocated at least `threshold` bytes themselves during one score call (the torch profiler's count)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        reranker.score("which one?", docs)
    return sum(1 for e in prof.events() if e.self_cpu_memory_usage >= threshold)


def test_forward_allocates_nothing_large_per_layer(reranker_dir: Path) -> None:
    """The CPU ops write every activation into the workspace: a repeated forward allocates only the embedding
    lookup at its size, where the twins allocate several such tensors per layer."""
    docs = [" ".join(["word"] * n) for n in (60, 40, 50, 30)]
    fused = Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256)
    twins = Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256, backend="torch")
    fused.score("which one?", docs)  # the workspace grows to this batch
    tokens = sum(len(ids) for ids in fused.prompt.encode([("which one?", d) for d in docs], None))
    threshold = tokens * fused.engine.config.hidden_size * 4  # one [T, H] fp32 activation
    layers = fused.engine.config.num_hidden_layers
    assert _large_allocations(fused, docs, threshold) <= 1  # F.embedding's output
    assert _large_allocations(twins, docs, threshold) >= 3 * layers


def test_no_compilation_during_requests_after_construction(reranker_dir: Path) -> None:
    """Every kernel was compiled while the engine was built: requests of any shape hit compiled code."""
    reranker = Reranker(reranker_dir, device="cpu", dtype=torch.bfloat16, max_length=256)
    assert reranker.engine.cpu_ops is not None and reranker.engine.cpu_ops.compile_error is None
    with torch.compiler.set_stance("fail_on_recompile"):
        reranker.score("q", ["d"])  # one token of its own after the shared prefix
        reranker.score("a longer question", ["one document", "and another, longer document", "x"])
        reranker.score_pairs([("q1", "a"), ("q2", "b c d")])  # no shared prefix across queries
        long = " ".join(["word"] * 150)  # past GEMM_MIN_KEYS: the bf16 GEMM attention on CPUs without AMX
        reranker.score("q", [long, "short"])
        reranker.score(long, ["d", "e f"])  # a long shared prefix, short documents after it


def test_a_new_thread_count_compiles_in_warmup_or_else_at_the_start_of_a_run(
    reranker_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """torch guards compiled code on its thread count: engine.warmup() compiles for a new one; without it the
    next run compiles before its forward, saying so; a count compiled once stays compiled. In fp32: a new thread
    count splits the matmuls differently, which moves bf16 scores by its rounding (~5e-4) but fp32 ones by ~1e-7."""
    reranker = Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256)
    threads = torch.get_num_threads()
    docs = ["one document", "another"]
    expected = reranker.score("a question", docs)
    try:
        torch.set_num_threads(threads + 1)
        reranker.engine.warmup()
        with torch.compiler.set_stance("fail_on_recompile"):
            np.testing.assert_allclose(reranker.score("a question", docs), expected, rtol=0, atol=1e-5)
        torch.set_num_threads(threads)
        with caplog.at_level("WARNING", logger="qrerank"), torch.compiler.set_stance("fail_on_recompile"):
            reranker.score("a question", docs)
        assert "thread count" not in caplog.text
        torch.set_num_threads(threads + 2)
        with caplog.at_level("WARNING", logger="qrerank"):
            got = reranker.score("a question", docs)
    finally:
        torch.set_num_threads(threads)
    assert f"thread count is now {threads + 2}; this engine's CPU ops were compiled for" in caplog.text
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_bf16_adds_no_error_beyond_the_twins(reranker_dir: Path) -> None:
    """Against the fp32 run, the fused bf16 ops err about as much as the bf16 twins: they round at other points
    (once per op instead of after each step), so document by document either may be closer; on average neither
    is worse by more than a quarter."""
    docs = corpus.passages(32, 5, 60)

    def raw(dtype: torch.dtype, backend: str) -> np.ndarray:
        model = Reranker(reranker_dir, device="cpu", dtype=dtype, max_length=256, backend=backend)
        return model.score("capital of France?", docs, raw=True)

    exact = raw(torch.float32, "torch")
    fused_err = np.abs(raw(torch.bfloat16, "cpu") - exact)
    twin_err = np.abs(raw(torch.bfloat16, "torch") - exact)
    assert fused_err.mean() <= 1.25 * twin_err.mean() and fused_err.max() <= 1.5 * twin_err.max()


def test_without_a_compiler_the_eager_kernels_run(reranker_dir: Path, tmp_path: Path) -> None:
    """A missing C++ compiler is no error: the engine runs the same ops eagerly and says why."""
    script = (
        "import sys, torch; from qrerank import Reranker; "
        f"r = Reranker({str(reranker_dir)!r}, device='cpu', dtype=torch.float32, max_length=256); "
        f"t = Reranker({str(reranker_dir)!r}, device='cpu', dtype=torch.float32, max_length=256, backend='torch'); "
        "d = ['a document', 'another one here']; "
        "print(repr(r)); print(float(abs(r.score('q', d) - t.score('q', d)).max()))"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    described, diff = done.stdout.strip().splitlines()[-2:]
    assert "eager kernels (compiling failed" in described and "compiler" in described.lower()
    assert float(diff) <= 1e-6
