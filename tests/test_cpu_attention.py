"""The bf16 CPU attention (cpu_attention.py: batched GEMMs around a shifted softmax) against the exact fp32
attention of the same bf16 inputs, next to its twin (bf16 SDPA): across query blocks, after shared prefixes,
compiled and eager, and with scores large enough that rounding them unshifted would show."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qrerank import reference
from qrerank.cpu_attention import GEMM_MIN_KEYS, QUERY_BLOCK, attention_into, plan_for
from qrerank.cpu_ops import FusedCpuOps
from qrerank.workspace import Workspace

CPU = torch.device("cpu")
GEMMS = plan_for(torch.bfloat16, amx=False)  # the plan under test, whatever this CPU has
HEADS, KV_HEADS, HEAD_DIM = 6, 2, 40  # 3 query heads per kv head, a head size that is no power of two
# bf16 attention errs by a few roundings of the values it mixes (p and the output are bf16): the bound is
# relative to the largest |v|, since an output may be a small difference of large values.
VALUE_ULPS = 2**-7
# Against the twin's own error: p is rounded to bf16 before p.v, where SDPA keeps it in fp32 without AMX, so
# the GEMM form adds about one rounding of the values to the twin's one (measured 1.0-2.0x in these tests).
TWIN_FACTOR = 2.5


def _batch(
    lengths: list[int], prefix_lens: list[int], q_scale: float = 1.0, offset: float = 0.0
) -> tuple[torch.Tensor, ...]:
    """bf16 q, k, v, cu_seqlens, prefix offsets/lens (every prefix is sequence 0). `offset` adds one shared
    direction to every key and query: scores then share a large common part, as real attention's often do."""
    torch.manual_seed(sum(lengths))
    t = sum(lengths)
    shared = torch.randn(HEAD_DIM)
    q = q_scale * torch.randn(t, HEADS, HEAD_DIM) + offset * shared
    k = torch.randn(t, KV_HEADS, HEAD_DIM) + offset * shared
    v = torch.randn(t, KV_HEADS, HEAD_DIM)
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    offsets, lens = torch.zeros(len(lengths), dtype=torch.int32), torch.tensor(prefix_lens, dtype=torch.int32)
    return q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, offsets, lens


def _errors(lengths: list[int], prefix_lens: list[int], got: torch.Tensor, batch: tuple[torch.Tensor, ...]):
    """(largest error of `got`, of the bf16 twin) against fp32 attention of the same inputs."""
    q, k, v, cu, offsets, lens = batch
    args = (cu, max(lengths), HEAD_DIM**-0.5, offsets, lens)
    exact = reference.attention(q.float(), k.float(), v.float(), *args)
    twin = reference.attention(q, k, v, *args)
    return (got.float() - exact).abs().max().item(), (twin.float() - exact).abs().max().item()


@pytest.fixture(scope="module")
def compiled() -> FusedCpuOps:
    return FusedCpuOps(torch.bfloat16, CPU, GEMMS)


@pytest.mark.parametrize("kernels", ["compiled", "eager"])
@pytest.mark.parametrize("prefix", [0, 45], ids=["causal", "after-prefix"])
def test_bf16_attention_matches_exact_attention_across_query_blocks(
    compiled: FusedCpuOps, kernels: str, prefix: int
) -> None:
    # the prefix (or a sequence), then 1 token, either side of GEMM_MIN_KEYS (SDPA, GEMMs), one block past
    # it, several blocks, and counts under KEY_BLOCK
    lengths = [45, 1, GEMM_MIN_KEYS - 1, GEMM_MIN_KEYS, GEMM_MIN_KEYS + 1, 3 * QUERY_BLOCK + 22, 2, 31]
    prefix_lens = [0] + [prefix] * (len(lengths) - 1)
    batch = _batch(lengths, prefix_lens)
    q, k, v, cu, offsets, lens = batch
    if kernels == "compiled":
        got = compiled.attention(q, k, v, cu, max(lengths), HEAD_DIM**-0.5, offsets, lens)
    else:
        out = torch.empty_like(q)
        got = attention_into(out, q, k, v, cu, HEAD_DIM**-0.5, offsets, lens, GEMMS, Workspace(torch.bfloat16, CPU))
    err, twin_err = _errors(lengths, prefix_lens, got, batch)
    assert err <= VALUE_ULPS * v.abs().max().item()
    assert err <= TWIN_FACTOR * twin_err


def test_large_scores_are_rounded_only_after_the_row_max_is_taken_out(compiled: FusedCpuOps) -> None:
    """Scores around 600 (bf16 spacing 4) that differ by a few units: rounded as they are, each weight would move
    by up to exp(2 * scale), so the shift by the row max before the one rounding is what keeps the result exact."""
    lengths, prefix_lens = [150, GEMM_MIN_KEYS], [0, 0]
    batch = _batch(lengths, prefix_lens, q_scale=0.3, offset=4.0)
    q, k, v, cu, offsets, lens = batch
    scores = q[:, :1].float() @ k[:, 0].float().T
    assert scores.abs().max() > 512  # the premise: bf16 spacing 4 where the scores are
    got = compiled.attention(q, k, v, cu, max(lengths), HEAD_DIM**-0.5, offsets, lens)
    err, twin_err = _errors(lengths, prefix_lens, got, batch)
    # What rounding the unshifted scores does to the same attention, for contrast.
    rounded_q = q.float().transpose(0, 1)[None]
    rounded_k, rounded_v = (x.float().transpose(0, 1)[None] for x in (k, v))
    unshifted = (rounded_q @ rounded_k.repeat_interleave(HEADS // KV_HEADS, 1).transpose(-1, -2)).bfloat16().float()
    causal = torch.ones(unshifted.shape[-2:], dtype=torch.bool).tril()
    same_sequence = torch.zeros_like(causal)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        same_sequence[a:b, a:b] = True
    weights = (unshifted * HEAD_DIM**-0.5).masked_fill(~(causal & same_sequence), float("-inf")).softmax(-1)
    naive = (weights @ rounded_v.repeat_interleave(HEADS // KV_HEADS, 1))[0].transpose(0, 1)
    naive_err, _ = _errors(lengths, prefix_lens, naive, batch)
    assert naive_err > 4 * err
    assert err <= VALUE_ULPS * v.abs().max().item() and err <= TWIN_FACTOR * twin_err
