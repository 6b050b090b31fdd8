"""Packed causal GQA attention on CPU, written into a caller's buffer (the twin, reference.attention, allocates one).

The form is chosen once per engine (`plan_for`). On a CPU with AVX512-BF16 but no AMX, bf16 runs as
batched GEMMs around a compiled softmax: there torch's CPU flash attention (SDPA) runs at about 80 GFLOP/s,
bf16 or fp32 alike, while a bf16 bmm of the same shapes runs at 550-770 GFLOP/s (an AMD EPYC, 2 threads).
Per block of up to QUERY_BLOCK queries of one sequence that sees at least GEMM_MIN_KEYS keys:

1. s = q.k^T in bf16 (the GEMM accumulates in fp32 and rounds its output once);
2. m = the row max of s over the keys each query may see;
3. r = q.k^T - m, by baddbmm: -m is added in the fp32 accumulator, before that one rounding;
4. p = softmax(scale * r) over those keys, computed in fp32 and rounded to bf16;
5. out = p.v.

Why the shift: raw scores reach hundreds, where bf16's spacing is 1 or 2, far too coarse inside an exp.
Rounded after the shift, a score d below the max errs by at most 2^-9 d, which moves its weight exp(-scale d)
by at most 2^-9/e of the row's largest (x e^-x <= 1/e): less than step 4's own rounding of p. m itself is a
bf16 value, exact in step 3, and only a reference point: within 2^-9 |max| of the true max.
A block's keys end at its last query's own (rounded up to KEY_BLOCK, the rest masked), so a causal
sequence computes about half its square plus one block; keys after a shared prefix are [prefix, sequence].

Everything else runs one SDPA call per sequence: fp32 (exactly the twin's calls), shorter bf16 sequences,
fp16, and bf16 on AMX CPUs, where torch's flash kernel itself runs on AMX tiles and the GEMM form has not
been measured (benchmarks/bench_cpu_attention.py compares them). With AMX, and in fp16, every call gets a
key count rounded up to KEY_BLOCK, on which that kernel ran 1.3-2x faster (an AMX Xeon; without AMX the
extra keys only cost). The keys no query may see change nothing but the summation blocks (their weights
are exactly zero). A causal call's extra keys are the rows after its sequence (finite, past every query's
diagonal); at the end of the batch, zeros.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qrerank.workspace import Workspace

KEY_BLOCK = 32  # key counts of the GEMMs, and of SDPA calls with AMX or in fp16, are rounded up to this
QUERY_BLOCK = 64  # at most this many queries per bf16 GEMM block: 64 ran fastest of 64-256 at 100-600 tokens
# bf16 sequences that see fewer keys than this run SDPA: the GEMM form's ~0.2 ms of fixed cost per sequence
# (its copies and compiled-kernel calls) outweighs its speed below ~100 keys (x0.2-0.7 at 16-48 tokens).
GEMM_MIN_KEYS = 128


@dataclass(frozen=True)
class AttentionPlan:
    """How one CPU engine runs attention (see the module docstring)."""

    gemm_min_keys: int | None  # bf16 sequences that see at least this many keys run as GEMMs; None: none do
    key_block: int  # SDPA key counts are rounded up to a multiple of this (1: exact counts)


def plan_for(dtype: torch.dtype, amx: bool) -> AttentionPlan:
    """The plan of an engine of `dtype` on a CPU with (amx) or without AMX tiles."""
    if dtype == torch.bfloat16 and not amx:
        return AttentionPlan(gemm_min_keys=GEMM_MIN_KEYS, key_block=1)
    return AttentionPlan(gemm_min_keys=None, key_block=KEY_BLOCK if dtype.itemsize == 2 else 1)


def row_max_into(scores: torch.Tensor, last_key: torch.Tensor, out: torch.Tensor) -> None:
    """out [H, m, 1] = the max of scores [H, m, L] over keys 0..last_key[i] of query i (last_key [m])."""
    hidden = torch.arange(scores.shape[-1]) > last_key[:, None]  # [m, L]
    out.copy_(scores.masked_fill(hidden, float("-inf")).amax(-1, keepdim=True))


def shifted_softmax_into(shifted: torch.Tensor, last_key: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """out [H, m, L] = softmax(scale * shifted) over keys 0..last_key[i], zero past them, in fp32 then rounded.
    shifted is q.k - (about) the row max, so exp never overflows."""
    hidden = torch.arange(shifted.shape[-1]) > last_key[:, None]  # [m, L]
    weights = torch.exp(shifted.float() * scale).masked_fill(hidden, 0.0)
    out.copy_(weights / weights.sum(-1, keepdim=True))


RowMax = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
ShiftedSoftmax = Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor], None]


def attention_into(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    prefix_offsets: torch.Tensor | None,
    prefix_lens: torch.Tensor | None,
    plan: AttentionPlan,
    workspace: Workspace,
    row_max: RowMax = row_max_into,
    shifted_softmax: ShiftedSoftmax = shifted_softmax_into,
) -> torch.Tensor:
    """reference.attention(q, k, v, cu_seqlens, _, scale, prefix_offsets, prefix_lens) written into out [T, Hq, D].
    row_max / shifted_softmax: the GEMM form's two kernels (compiled by cpu_ops, or these eager functions)."""
    bounds = cu_seqlens.tolist()
    if prefix_offsets is None or prefix_lens is None:
        prefixes = [(0, 0)] * (len(bounds) - 1)
    else:
        prefixes = list(zip(prefix_offsets.tolist(), prefix_lens.tolist()))
    for (start, end), (p_start, p_len) in zip(itertools.pairwise(bounds), prefixes):
        if start == end:
            continue
        args = (out, q, k, v, start, end, p_start, p_len, scale)
        gemm = plan.gemm_min_keys is not None and q.dtype == torch.bfloat16
        if gemm and p_len + end - start >= plan.gemm_min_keys:
            _gemm_sequence(*args, workspace, row_max, shifted_softmax)
        else:
            _sdpa_sequence(*args, plan.key_block)
    return out


def _gemm_sequence(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: int,
    end: int,
    p_start: int,
    p_len: int,
    scale: float,
    workspace: Workspace,
    row_max: RowMax,
    shifted_softmax: ShiftedSoftmax,
) -> None:
    """One sequence (rows start..end of q, after p_len prefix rows from p_start of k/v) by the steps above."""
    n, (_, q_heads, dim), kv_heads = end - start, q.shape, k.shape[1]
    group = q_heads // kv_heads  # query head h reads kv head h // group, as enable_gqa
    keys = _round_up(p_len + n, KEY_BLOCK)
    parts = (slice(p_start, p_start + p_len), slice(start, end))
    # K^T [H, D, keys], filled through its [H, keys, D] view: q.k^T then reads a plain strided matrix; a
    # transposed view of head-major keys made bmm copy it on every call, at 0.6x the rate (an AVX512-BF16
    # AMD EPYC, 128 queries x 256 keys).
    k_seq_t = workspace.take("attention.keys", (kv_heads, dim, keys))
    _head_major(k_seq_t.transpose(1, 2), *(k[s] for s in parts))
    v_seq = _head_major(workspace.take("attention.values", (kv_heads, keys, dim)), *(v[s] for s in parts))
    size = _ceil_div(n, _ceil_div(n, QUERY_BLOCK))  # equal blocks of at most QUERY_BLOCK: 80 queries are 40 + 40
    for first in range(0, n, size):
        m = min(size, n - first)
        seen = min(keys, _round_up(p_len + first + m, KEY_BLOCK))  # keys this block computes
        rows = q[start + first : start + first + m].view(m, kv_heads, group, dim)
        q_block = workspace.take("attention.q", (kv_heads, group, m, dim))
        q_block.copy_(rows.permute(1, 2, 0, 3))
        q_block = q_block.view(kv_heads, group * m, dim)  # the group's queries share their kv head's GEMM
        k_t, v_block = k_seq_t[:, :, :seen], v_seq[:, :seen]
        last_key = torch.arange(p_len + first, p_len + first + m)  # [m]: query i sees keys 0..last_key[i]
        scores = workspace.take("attention.scores", (kv_heads, group * m, seen))
        torch.bmm(q_block, k_t, out=scores)
        peak = workspace.take("attention.max", (kv_heads, group * m, 1))
        row_max(*_dynamic(scores.view(q_heads, m, seen), last_key, peak.view(q_heads, m, 1)))
        torch.baddbmm(peak.neg_(), q_block, k_t, out=scores)  # q.k - max, rounded once
        probs = workspace.take("attention.probs", (kv_heads, group * m, seen))
        shifted, last_key, probs_3d = _dynamic(scores.view(q_heads, m, seen), last_key, probs.view(q_heads, m, seen))
        shifted_softmax(shifted, last_key, scale, probs_3d)
        block_out = workspace.take("attention.block", (kv_heads, group * m, dim))
        torch.bmm(probs, v_block, out=block_out)
        out[start + first : start + first + m].view(m, kv_heads, group, dim).copy_(
            block_out.view(kv_heads, group, m, dim).permute(2, 0, 1, 3)
        )


def _head_major(buffer: torch.Tensor, *parts: torch.Tensor) -> torch.Tensor:
    """buffer [H, keys, D] = the parts [n_i, H, D] one after another, then zeros (finite: p.v reads them)."""
    filled = 0
    for part in parts:
        buffer[:, filled : filled + len(part)] = part.transpose(0, 1)
        filled += len(part)
    buffer[:, filled:] = 0
    return buffer


def _dynamic(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mark every dimension but the heads dynamic: one compiled kernel serves every block and key count."""
    for t in tensors:
        for dim in range(1 if t.dim() == 3 else 0, t.dim()):
            torch._dynamo.maybe_mark_dynamic(t, dim)
    return tensors


def _sdpa_sequence(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: int,
    end: int,
    p_start: int,
    p_len: int,
    scale: float,
    block: int,
) -> None:
    """One sequence by torch's SDPA, keys rounded up to `block`: is_causal without a prefix, a mask after one."""
    n = end - start
    qs = q[start:end].transpose(0, 1)[None]  # [1, Hq, n, D]
    if p_len == 0:
        keys = _round_up(n, block)
        if start + keys <= k.shape[0]:
            ks, vs = (x[start : start + keys].transpose(0, 1)[None] for x in (k, v))
        else:
            ks, vs = _padded(keys, k[start:end]), _padded(keys, v[start:end])
        # is_causal with more keys than queries is top-left aligned: query i sees keys 0..i only.
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
    else:
        keys = _round_up(p_len + n, block)
        prefix = slice(p_start, p_start + p_len)
        ks, vs = _padded(keys, k[prefix], k[start:end]), _padded(keys, v[prefix], v[start:end])
        visible = torch.zeros(n, keys, dtype=torch.bool)  # [n, keys]: the prefix, then causal; padding never
        visible[:, : p_len + n] = torch.ones(n, p_len + n, dtype=torch.bool).tril(p_len)
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=visible, scale=scale, enable_gqa=True)
    out[start:end] = o[0].transpose(0, 1)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(keys: int, block: int) -> int:
    return _ceil_div(keys, block) * block


def _padded(keys: int, *parts: torch.Tensor) -> torch.Tensor:
    """[1, H, keys, D], head-major like the twin's torch.cat (fp32 SDPA is slower on token-major keys)."""
    _, heads, dim = parts[0].shape
    return _head_major(parts[0].new_empty(heads, keys, dim), *parts)[None]
