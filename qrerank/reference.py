"""Torch reference twins of every fused op: the CPU path, and the ground truth the Triton kernels are tested against.

Each function keeps the arithmetic order of the Hugging Face Qwen3 modules it replaces, so that in
fp32 qrerank matches transformers to rounding, and documents the tensor shapes a kernel must accept.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [N, H], weight [H] -> [N, H]. Statistics in fp32; weight applied in x's dtype (as Qwen3RMSNorm)."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm: returns (rms_norm(x + residual), x + residual), both [N, H]."""
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


def rope_cache(head_dim: int, theta: float, max_positions: int, device: torch.device) -> torch.Tensor:
    """[P, 2, D/2] fp32: cos and sin of position * inv_freq, computed as transformers does (fp32 throughout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = torch.arange(max_positions, dtype=torch.float)[:, None] * inv_freq[None, :]
    return torch.stack((freqs.cos(), freqs.sin()), dim=1).to(device)


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
    """Split the fused projection, RMSNorm each q/k head, rotate q/k by their positions.

    qkv [T, (Hq + 2 Hkv) * D], q_weight/k_weight [D], rope [P, 2, D/2], positions [T]
    -> q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D].
    """
    t = qkv.shape[0]
    head_dim = q_weight.shape[0]
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    q = rms_norm(q.reshape(t, num_q_heads, head_dim), q_weight, eps)
    k = rms_norm(k.reshape(t, num_kv_heads, head_dim), k_weight, eps)
    # transformers casts cos/sin to the activation dtype before rotating; do the same.
    cos_sin = rope[positions].to(qkv.dtype)  # [T, 2, D/2]
    cos, sin = cos_sin[:, None, 0], cos_sin[:, None, 1]  # [T, 1, D/2]
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v.reshape(t, num_kv_heads, head_dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split (GPT-NeoX) rotation: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """Causal GQA attention confined to each packed sequence.

    q [T, Hq, D], k/v [T, Hkv, D], cu_seqlens [B+1] (int32, starts at 0) -> [T, Hq, D].
    One fused SDPA call per sequence: no [T, T] mask over the packed batch, memory O(max_seqlen^2)
    per head at worst. Reading cu_seqlens on the host synchronises a GPU; the Triton kernel that
    replaces this on CUDA finds each sequence on the device instead.
    """
    del max_seqlen  # part of the kernel's signature; per-sequence calls do not need it
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        # [1, H, L, D] views: the 4-D GQA form takes torch's fused (flash) CPU kernel; 3-D inputs or
        # repeated K/V fall back to a materialised [H, L, L] math path that is several times slower.
        qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        out[start:end] = o[0].transpose(0, 1)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate half first, as the fused weight is laid out) -> silu(gate) * up [T, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
