"""Packed varlen causal GQA flash attention, optionally after a shared prefix (Triton).

Twin of `qrerank.reference.attention`, with its signature and semantics. One flattened grid covers every
sequence's query blocks for every KV head; each program finds its sequence on the device by a binary
search over cu_seqlens, so the launcher never synchronises with the GPU. The query heads of one KV group
are packed into the M tile (M = BLOCK_Q tokens x GROUP heads), so each K/V tile is loaded once per group.
A sequence may attend first to a shared prefix: keys packed elsewhere in the batch as an ordinary
sequence, visible to all of its queries. A program runs one fp32 online softmax (base 2) over two loops:
the tiles every row sees (whole prefix tiles and own tiles below the diagonal) without masks, then the
masked ones (the prefix's partial last tile and the diagonal tiles); tiles above the diagonal are skipped.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from qrerank.kernels.aot import AotSpec, pointer_type

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
HEAD_DIMS = (64, 128)
GROUPS = (1, 2, 4, 8)  # query heads per KV head; powers of two so BLOCK_Q = BLOCK_M // GROUP is one too
_STRIDES = ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_ot", "stride_oh")

FAMILIES = (90, 80)  # configuration families: compute capability 9.x/10.x, and everything else
# (family, fp32 inputs, head dim) -> (BLOCK_M, BLOCK_N, num_warps, num_stages). M = BLOCK_Q tokens x GROUP heads.
# Family 90 (wgmma reads K/V from shared memory): 128 rows on 8 warps, two warpgroups of 64 rows; 64-key
# tiles keep the diagonal waste small for ~512-token sequences and halve the per-key cost of rescaling
# the [M, D] accumulator compared with 32. Shared memory: Q 32 KiB + 3 stages x K/V 32 KiB = 128 KiB.
# Family 80 (mma.sync holds each warp's whole K or V tile in registers): D = 128 needs 32-key tiles to
# stay free of spills. fp32 inputs use tf32x3 dots (fp32 accuracy, three tensor-core passes), whose
# split operands (a big and a small tf32 half of Q, K and V) need smaller tiles still: 16 rows of 16 keys
# on family 80 (32 rows spilled at D = 64 with 8 heads per group under Triton 3.6). At D = 128 no wgmma
# tile fits: a 64-row warpgroup holds 64 accumulator registers per thread plus both halves of its Q rows,
# and every 64- or 128-row tile tried spilled (72 to 6000 bytes, Triton 3.6 and 3.9), so family 90 runs
# the same 16-row mma.sync tiles there (fp32 is the accuracy path, not the fast one). The CPU
# interpreter runs the family 90 table.
_TILES = {
    (90, False, 64): (128, 64, 8, 3),
    (90, False, 128): (128, 64, 8, 3),
    (90, True, 64): (128, 32, 8, 2),
    (90, True, 128): (16, 16, 4, 2),
    (80, False, 64): (128, 64, 8, 3),
    (80, False, 128): (128, 32, 8, 3),
    (80, True, 64): (16, 16, 4, 2),
    (80, True, 128): (16, 16, 4, 2),
}


@dataclass(frozen=True)
class _Config:
    block_q: int  # query tokens per program; BLOCK_M = block_q * group rows
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int


def _config(head_dim: int, group: int, dtype: torch.dtype, family: int) -> _Config:
    """The one configuration the launcher uses for these inputs (and that aot_configs compiles)."""
    block_m, block_n, num_warps, num_stages = _TILES[family, dtype == torch.float32, head_dim]
    return _Config(block_m // group, block_n, num_warps, num_stages)


def _family(device: torch.device) -> int:
    """The configuration family of a device (a cached host query, no synchronisation)."""
    if device.type != "cuda":
        return 90  # Triton's interpreter: any table runs; use the one the H100/H200 target runs
    return 90 if torch.cuda.get_device_capability(device)[0] in (9, 10) else 80


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, k_tile, v_tile, stride_kt, stride_vt, qk_scale, n_valid, last_visible,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over the BLOCK_N keys whose first K/V rows are k_tile/v_tile.

    MASKED: only the first n_valid keys exist, and row m sees keys 0 .. last_visible[m] of the tile.
    m_i is the running max in log2 units (scores times scale * log2(e)); l_i the running sum.
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = k_tile + offs_n[None, :] * stride_kt + offs_d[:, None]  # [D, N]: K^T, read along D
    v_ptrs = v_tile + offs_n[:, None] * stride_vt + offs_d[None, :]  # [N, D]
    if MASKED:
        k = tl.load(k_ptrs, mask=offs_n[None, :] < n_valid, other=0.0)
        v = tl.load(v_ptrs, mask=offs_n[:, None] < n_valid, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    # fp32 accumulation; for fp32 inputs tf32x3 keeps fp32 accuracy on tensor cores (16-bit inputs ignore it).
    s = tl.dot(q, k, input_precision="tf32x3")  # [M, N]
    if MASKED:
        s = tl.where(offs_n[None, :] <= last_visible[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    # An explicit FMA per score (not left to Triton's fp-fusion default); masked scores give exactly 0.
    p = tl.math.exp2(tl.math.fma(s, qk_scale, -m_new[:, None]))
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="tf32x3")  # [M, D]
    return acc, l_i, m_new


# num_seqs generic: Triton would otherwise compile a separate kernel the first time a batch holds 1 or a
# multiple of 16 sequences, a multi-second stall in the middle of serving.
@triton.jit(do_not_specialize=["num_seqs"])
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, cu_seqlens_ptr, prefix_offsets_ptr, prefix_lens_ptr,
    num_seqs, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_PREFIX: tl.constexpr,
):  # fmt: skip
    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP
    # Heaviest blocks first: program 0 takes the last block of the grid (the last query block of the
    # last sequence), so the long causal rows do not form the tail of the launch.
    block = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)

    # Sequence b owns global blocks cu[b] // BLOCK_Q + b onwards (one spare block per sequence makes
    # this bound hold without knowing the lengths): find the last b whose first block is <= block.
    lo = 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(cu_seqlens_ptr + mid) // BLOCK_Q + mid <= block:
            lo = mid
        else:
            hi = mid - 1
    seq_start = tl.load(cu_seqlens_ptr + lo)
    seq_len = tl.load(cu_seqlens_ptr + lo + 1) - seq_start
    q_lo = (block - seq_start // BLOCK_Q - lo) * BLOCK_Q  # first query token of this block, in-sequence
    if q_lo >= seq_len:
        return  # a spare block (or a zero-length sequence)
    q_hi = tl.minimum(q_lo + BLOCK_Q, seq_len)
    seq_start = seq_start.to(tl.int64)  # token offsets into a large packed batch can pass 2^31 elements
    if HAS_PREFIX:
        prefix_start = tl.load(prefix_offsets_ptr + lo).to(tl.int64)
        prefix_len = tl.load(prefix_lens_ptr + lo)
    else:
        prefix_start = seq_start
        prefix_len = 0

    # Row m is query token q_lo + m // GROUP of head kv_head * GROUP + m % GROUP: a token's GROUP
    # heads are adjacent in memory, so the Q load and the output store stay contiguous per token.
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_pos = q_lo + offs_m // GROUP  # [M]
    head = kv_head * GROUP + offs_m % GROUP  # [M]
    row_ok = q_pos < seq_len
    q_ptrs = q_ptr + (seq_start + q_pos[:, None]) * stride_qt + head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # [M, D]

    # A finite initial max keeps alpha = exp2(m_i - m_new) free of (-inf) - (-inf) = NaN even for a row
    # whose first tile is fully masked; exp2(-inf - m) is 0, so such a row just contributes nothing.
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh

    # Unmasked tiles, visible to every row: the whole prefix tiles, then the own tiles that end at or
    # before q_lo. One loop over both (one inlined tile body, one software pipeline).
    prefix_tiles = prefix_len // BLOCK_N
    for i in range(0, prefix_tiles + q_lo // BLOCK_N):
        in_prefix = i < prefix_tiles
        row = tl.where(in_prefix, prefix_start + i * BLOCK_N, seq_start + (i - prefix_tiles) * BLOCK_N)
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, k_head + row * stride_kt, v_head + row * stride_vt, stride_kt, stride_vt, qk_scale,
            BLOCK_N, q_pos, HEAD_DIM, BLOCK_N, False,
        )  # fmt: skip

    # Masked tiles: the prefix's partial last tile (bounded only), then the own tiles from the one
    # holding q_lo up to q_hi (bounded and causal). One to three per program: a software pipeline would
    # cost registers and buy nothing, hence num_stages=1.
    prefix_tail = (prefix_len % BLOCK_N != 0).to(tl.int32)
    diag_start = q_lo // BLOCK_N * BLOCK_N
    for j in tl.range(0, prefix_tail + tl.cdiv(q_hi - diag_start, BLOCK_N), num_stages=1):
        in_prefix = j < prefix_tail
        start = tl.where(in_prefix, prefix_tiles * BLOCK_N, diag_start + (j - prefix_tail) * BLOCK_N)
        row = tl.where(in_prefix, prefix_start, seq_start) + start
        n_valid = tl.where(in_prefix, prefix_len, seq_len) - start
        last_visible = tl.minimum(tl.where(in_prefix, BLOCK_N, q_pos - start), n_valid - 1)  # [M]
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, k_head + row * stride_kt, v_head + row * stride_vt, stride_kt, stride_vt, qk_scale,
            n_valid, last_visible, HEAD_DIM, BLOCK_N, True,
        )  # fmt: skip

    # Every stored row saw at least its own key, so l_i > 0 there; padding rows (q_pos >= seq_len) are not stored.
    out = acc / l_i[:, None]
    o_ptrs = o_ptr + (seq_start + q_pos[:, None]) * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    prefix_offsets: torch.Tensor | None = None,
    prefix_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal GQA attention confined to each packed sequence, optionally after a shared prefix.

    q [T, Hq, D], k/v [T, Hkv, D] (bf16/fp16/fp32, last dim contiguous, other strides free),
    cu_seqlens [B+1] int32, prefix_offsets/prefix_lens [B] int32 or both None -> new [T, Hq, D] in q's dtype.
    Shapes, strides, dtypes and devices are checked here; the values inside cu_seqlens and the prefix
    tensors are not (reading them would synchronise with the GPU): they must be non-decreasing from 0 to
    T, and name in-range prefixes. max_seqlen is accepted for the reference's signature; the grid does not
    need it.
    """
    _check(q, k, v, cu_seqlens, max_seqlen, scale, prefix_offsets, prefix_lens)
    tokens, q_heads, head_dim = q.shape
    kv_heads = k.shape[1]
    out = torch.empty((tokens, q_heads, head_dim), dtype=q.dtype, device=q.device)
    num_seqs = cu_seqlens.shape[0] - 1
    if tokens == 0:
        return out
    config = _config(head_dim, q_heads // kv_heads, q.dtype, _family(q.device))
    has_prefix = prefix_offsets is not None
    grid = (triton.cdiv(tokens, config.block_q) + num_seqs, kv_heads)
    _attention_kernel[grid](
        q, k, v, out, cu_seqlens,
        prefix_offsets if has_prefix else cu_seqlens, prefix_lens if has_prefix else cu_seqlens,
        num_seqs, scale * math.log2(math.e),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, GROUP=q_heads // kv_heads, BLOCK_Q=config.block_q, BLOCK_N=config.block_n,
        HAS_PREFIX=has_prefix, num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    prefix_offsets: torch.Tensor | None,
    prefix_lens: torch.Tensor | None,
) -> None:
    """Everything about the arguments that can be checked without reading device memory."""
    named = {"q": q, "k": k, "v": v, "cu_seqlens": cu_seqlens}
    if (prefix_offsets is None) != (prefix_lens is None):
        raise ValueError("prefix_offsets and prefix_lens go together: pass both or neither")
    if prefix_offsets is not None:
        named |= {"prefix_offsets": prefix_offsets, "prefix_lens": prefix_lens}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    # A CPU tensor reaches the kernel only through Triton's interpreter (TRITON_INTERPRET=1, tests).
    if q.device.type != "cuda" and isinstance(_attention_kernel, triton.runtime.JITFunction):
        raise ValueError(f"q is on {q.device}; the Triton attention kernel needs CUDA tensors")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 3:
            raise ValueError(f"{name} must be [tokens, heads, head_dim], got shape {tuple(x.shape)}")
        if x.dtype != q.dtype or x.dtype not in DTYPES:
            raise ValueError(f"{name} has dtype {x.dtype}; q, k and v must share one of {DTYPES}")
        if x.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim, got strides {x.stride()}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [T, Hkv, D] for q {tuple(q.shape)}")
    if q.shape[2] not in HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {HEAD_DIMS}, got {q.shape[2]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] or q.shape[1] // k.shape[1] not in GROUPS:
        raise ValueError(f"q heads ({q.shape[1]}) must be {GROUPS} times the kv heads ({k.shape[1]})")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.stride(0) != 1:
        raise ValueError(f"cu_seqlens must be a contiguous 1-D int32 tensor, got {cu_seqlens.dtype} {cu_seqlens.shape}")
    if cu_seqlens.shape[0] < (2 if q.shape[0] else 1):
        raise ValueError(f"cu_seqlens needs B+1 >= 2 entries for {q.shape[0]} tokens, got {cu_seqlens.shape[0]}")
    for name, x in (("prefix_offsets", prefix_offsets), ("prefix_lens", prefix_lens)):
        if x is not None and (x.dtype != torch.int32 or x.shape != (cu_seqlens.shape[0] - 1,) or x.stride(0) != 1):
            raise ValueError(
                f"{name} must be a contiguous int32 [B={cu_seqlens.shape[0] - 1}] tensor, got {x.dtype} {x.shape}"
            )
    if not isinstance(max_seqlen, int) or isinstance(max_seqlen, bool) or max_seqlen < 0:
        raise ValueError(f"max_seqlen must be a non-negative int, got {max_seqlen!r}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < math.inf:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")


def aot_configs() -> list[AotSpec]:
    """Every configuration the launcher can pick, in every dtype, each compiled once.

    A configuration that only one family uses carries ",sm90" or ",sm80" in its name: the arch it is
    tuned for (compiling it for the other one is harmless but says little).
    """
    families: dict[tuple[torch.dtype, int, int, bool, _Config], list[int]] = {}
    for dtype, head_dim, group, has_prefix, family in itertools.product(
        DTYPES, HEAD_DIMS, GROUPS, (False, True), FAMILIES
    ):
        config = _config(head_dim, group, dtype, family)
        families.setdefault((dtype, head_dim, group, has_prefix, config), []).append(family)
    specs = []
    for (dtype, head_dim, group, has_prefix, config), used_by in families.items():
        ptr = pointer_type(dtype)
        constexprs = {
            "HEAD_DIM": head_dim,
            "GROUP": group,
            "BLOCK_Q": config.block_q,
            "BLOCK_N": config.block_n,
            "HAS_PREFIX": has_prefix,
        }
        signature = {
            **dict.fromkeys(("q_ptr", "k_ptr", "v_ptr", "o_ptr"), ptr),
            **dict.fromkeys(("cu_seqlens_ptr", "prefix_offsets_ptr", "prefix_lens_ptr"), "*i32"),
            "num_seqs": "i32",
            "qk_scale": "fp32",
            **dict.fromkeys(_STRIDES, "i32"),
            **dict.fromkeys(constexprs, "constexpr"),
        }
        tags = (",prefix" if has_prefix else "") + ("" if len(used_by) == len(FAMILIES) else f",sm{used_by[0]}")
        specs.append(
            AotSpec(
                name=f"attention[D={head_dim},group={group},{ptr[1:]}{tags}]",
                kernel=_attention_kernel,
                signature=signature,
                constexprs=constexprs,
                num_warps=config.num_warps,
                num_stages=config.num_stages,
            )
        )
    return specs
