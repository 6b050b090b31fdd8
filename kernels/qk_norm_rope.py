"""Per-head q/k RMSNorm then half-split (NeoX) RoPE, in one pass over the fused QKV projection output.

Twin of reference.qk_norm_rope. One program per token: its q heads as one [Hq, D/2] x 2 tile pair and its
k heads as another, so the token's cos/sin row is read once for all heads. The math is fp32 with the
reference's roundings to the activation dtype reproduced (normed row, weight product, cos/sin, each
rotation product and sum), so the kernel agrees with the torch path to an ulp. v is not touched: it is
returned as a strided view of qkv (the attention kernel takes a token stride).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qrerank.kernels.aot import AotSpec, pointer_type

# (q heads, kv heads, head_dim) of Qwen3 0.6B and 4B/8B, and the same head counts at head_dim 64
QWEN3_HEAD_LAYOUTS = ((16, 8, 128), (32, 8, 128), (16, 8, 64), (32, 8, 64))
AOT_DTYPES = (torch.bfloat16, torch.float16)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _round(x, dtype: tl.constexpr):
    """fp32 -> activation dtype -> fp32: the rounding torch applies after each op in that dtype."""
    return x.to(dtype).to(tl.float32)


@triton.jit
def _norm_rope_heads(
    src, weight_ptr, dst, cos, sin, eps, NUM_HEADS: tl.constexpr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr
):
    """RMSNorm each of NUM_HEADS heads at src (HEADS = its power-of-two tile height), rotate, store at dst."""
    HALF: tl.constexpr = HEAD_DIM // 2
    heads = tl.arange(0, HEADS)[:, None]
    cols = tl.arange(0, HALF)[None, :]
    mask = heads < NUM_HEADS  # [HEADS, 1], broadcast by load/store over the columns
    offsets = heads * HEAD_DIM + cols
    x1 = tl.load(src + offsets, mask=mask, other=0.0)  # first half of each head
    x2 = tl.load(src + offsets + HALF, mask=mask, other=0.0)  # second half
    dtype = x1.dtype
    x1, x2 = x1.to(tl.float32), x2.to(tl.float32)
    rstd = tl.math.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / HEAD_DIM + eps)[:, None]
    w1 = tl.load(weight_ptr + cols).to(tl.float32)
    w2 = tl.load(weight_ptr + HALF + cols).to(tl.float32)
    n1 = _round(w1 * _round(x1 * rstd, dtype), dtype)
    n2 = _round(w2 * _round(x2 * rstd, dtype), dtype)
    out1 = _round(n1 * cos, dtype) - _round(n2 * sin, dtype)
    out2 = _round(n2 * cos, dtype) + _round(n1 * sin, dtype)
    tl.store(dst + offsets, out1.to(dtype), mask=mask)
    tl.store(dst + offsets + HALF, out2.to(dtype), mask=mask)


@triton.jit
def _qk_norm_rope_kernel(
    qkv_ptr,
    qkv_stride,
    q_weight_ptr,
    k_weight_ptr,
    rope_ptr,
    positions_ptr,
    q_ptr,
    k_ptr,
    eps,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    Q_HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
):
    # qkv [T, (Hq + 2 Hkv) * D] with row stride qkv_stride; rope [P, 2, D/2] fp32; q [T, Hq, D], k [T, Hkv, D]
    token = tl.program_id(0).to(tl.int64)
    dtype = q_ptr.dtype.element_ty
    position = tl.load(positions_ptr + token)
    half = tl.arange(0, HEAD_DIM // 2)[None, :]
    # transformers casts cos/sin to the activation dtype before rotating
    cos = _round(tl.load(rope_ptr + position * HEAD_DIM + half), dtype)  # [1, D/2]
    sin = _round(tl.load(rope_ptr + position * HEAD_DIM + HEAD_DIM // 2 + half), dtype)
    row = qkv_ptr + token * qkv_stride
    _norm_rope_heads(
        row, q_weight_ptr, q_ptr + token * (NUM_Q_HEADS * HEAD_DIM), cos, sin, eps, NUM_Q_HEADS, Q_HEADS, HEAD_DIM
    )
    _norm_rope_heads(
        row + NUM_Q_HEADS * HEAD_DIM, k_weight_ptr, k_ptr + token * (NUM_KV_HEADS * HEAD_DIM), cos, sin, eps,
        NUM_KV_HEADS, KV_HEADS, HEAD_DIM,
    )  # fmt: skip


def launch_config(num_q_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
    """Constexprs and launch options for one head layout (shared by the launcher and aot_configs).

    Head counts are padded to powers of two (masked); about 8 q elements per thread, 4 to 16 warps.
    """
    q_heads = triton.next_power_of_2(num_q_heads)
    return {
        "NUM_Q_HEADS": num_q_heads,
        "NUM_KV_HEADS": num_kv_heads,
        "HEAD_DIM": head_dim,
        "Q_HEADS": q_heads,
        "KV_HEADS": triton.next_power_of_2(num_kv_heads),
        "num_warps": min(16, max(4, q_heads * head_dim // 512)),
        "num_stages": 1,
    }


def qk_norm_rope(
    qkv: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    rope: torch.Tensor,
    positions: torch.Tensor,
    num_q_heads: int,
    num_kv_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [T, (Hq + 2 Hkv) * D], q_weight/k_weight [D], rope [P, 2, D/2] fp32, positions [T] (each < P)
    -> q [T, Hq, D], k [T, Hkv, D] (new, contiguous), v [T, Hkv, D] (a view of qkv), as reference.qk_norm_rope.
    """
    _check(qkv, q_weight, k_weight, rope, positions, num_q_heads, num_kv_heads, eps)
    tokens, head_dim = qkv.shape[0], q_weight.shape[0]
    q = torch.empty((tokens, num_q_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    k = torch.empty((tokens, num_kv_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    v = qkv[:, (num_q_heads + num_kv_heads) * head_dim :].unflatten(1, (num_kv_heads, head_dim))
    if tokens > 0:
        _qk_norm_rope_kernel[(tokens,)](
            qkv, qkv.stride(0), q_weight, k_weight, rope, positions, q, k, float(eps),
            **launch_config(num_q_heads, num_kv_heads, head_dim),
        )  # fmt: skip
    return q, k, v


def aot_configs() -> list[AotSpec]:
    """Every configuration the launcher picks for the Qwen3 head layouts, in bf16 and fp16."""
    specs = []
    for dtype in AOT_DTYPES:
        ptr = pointer_type(dtype)
        for layout in QWEN3_HEAD_LAYOUTS:
            config = launch_config(*layout)
            constexprs = {k: v for k, v in config.items() if k.isupper()}
            signature = {
                "qkv_ptr": ptr, "qkv_stride": "i32", "q_weight_ptr": ptr, "k_weight_ptr": ptr, "rope_ptr": "*fp32",
                "positions_ptr": "*i64", "q_ptr": ptr, "k_ptr": ptr, "eps": "fp32",
            }  # fmt: skip
            signature.update(dict.fromkeys(constexprs, "constexpr"))
            specs.append(
                AotSpec(
                    name=f"qk_norm_rope[Hq={layout[0]},Hkv={layout[1]},D={layout[2]},{ptr[1:]}]",
                    kernel=_qk_norm_rope_kernel,
                    signature=signature,
                    constexprs=constexprs,
                    num_warps=config["num_warps"],
                    num_stages=config["num_stages"],
                )
            )
    return specs


def _check(
    qkv: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    rope: torch.Tensor,
    positions: torch.Tensor,
    num_q_heads: int,
    num_kv_heads: int,
    eps: float,
) -> None:
    for name, value in (("num_q_heads", num_q_heads), ("num_kv_heads", num_kv_heads)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    tensors = {"qkv": qkv, "q_weight": q_weight, "k_weight": k_weight, "rope": rope, "positions": positions}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != qkv.device:
            raise ValueError(f"{name} is on {t.device}, qkv on {qkv.device}: all inputs must share a device")
    if qkv.dtype not in DTYPES:
        raise ValueError(f"qkv has dtype {qkv.dtype}; the kernel supports {DTYPES}")
    head_dim = q_weight.shape[0] if q_weight.dim() == 1 else 0
    if head_dim < 2 or head_dim & (head_dim - 1):
        raise ValueError(f"q_weight must be [D] with D a power of two >= 2, got shape {tuple(q_weight.shape)}")
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.shape != (head_dim,) or w.dtype != qkv.dtype or not w.is_contiguous():
            raise ValueError(f"{name} must be a contiguous [{head_dim}] {qkv.dtype} tensor, got {_describe(w)}")
    width = (num_q_heads + 2 * num_kv_heads) * head_dim
    if qkv.dim() != 2 or qkv.shape[1] != width or qkv.stride(1) != 1:
        raise ValueError(
            f"qkv must be [T, {width}] ((Hq + 2 Hkv) * D with Hq={num_q_heads}, Hkv={num_kv_heads}, D={head_dim}) "
            f"and contiguous in its last dimension, got {_describe(qkv)} with strides {qkv.stride()}"
        )
    if rope.dim() != 3 or rope.shape[1:] != (2, head_dim // 2) or rope.dtype != torch.float32:
        raise ValueError(f"rope must be a [P, 2, {head_dim // 2}] float32 tensor, got {_describe(rope)}")
    if not rope.is_contiguous():
        raise ValueError(f"rope must be contiguous, got strides {rope.stride()}")
    if positions.shape != (qkv.shape[0],) or positions.dtype != torch.int64:
        raise ValueError(
            f"positions must be a [{qkv.shape[0]}] int64 tensor (one per token), got {_describe(positions)}"
        )
    if positions.stride(0) != 1 and positions.shape[0] > 1:
        raise ValueError(f"positions must be contiguous, got stride {positions.stride(0)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype}"
