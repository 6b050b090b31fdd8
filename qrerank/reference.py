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

    q [T, Hq, D], k/v [T, Hkv, D], cu_seqlens [B+1] (int32, starts at 0) -> [T, Hq, D].
    prefix_offsets/prefix_lens [B] (int32, both or neither): sequence b first attends, without a mask,
    to the prefix_lens[b] keys starting at token prefix_offsets[b] (a shared prefix packed as its own
    sequence elsewhere in the batch), then to its own keys causally; 0 means no prefix.
    One fused SDPA call per sequence: no [T, T] mask over the packed batch, memory O(max_seqlen^2)
    per head at worst. Reading cu_seqlens on the host synchronises a GPU; the Triton kernel that
    replaces this on CUDA finds each sequence on the device instead.
    """
    del max_seqlen  # part of the kernel's signature; per-sequence calls do not need it
    if (prefix_offsets is None) != (prefix_lens is None):
        raise ValueError("prefix_offsets and prefix_lens go together: pass both or neither")
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    if prefix_offsets is None or prefix_lens is None:
        prefixes = [(0, 0)] * (len(bounds) - 1)
    else:
        prefixes = list(zip(prefix_offsets.tolist(), prefix_lens.tolist()))
    for (start, end), (p_start, p_len) in zip(itertools.pairwise(bounds), prefixes):
        if start == end:
            continue  # zero-length sequences pad a batch to a captured CUDA-graph shape
        # [1, H, L, D] views: the 4-D GQA form takes torch's fused (flash) CPU kernel; 3-D inputs or
        # repeated K/V fall back to a materialised [H, L, L] math path that is several times slower.
        qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))
        if p_len == 0:
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        else:
            kp, vp = (x[p_start : p_start + p_len].transpose(0, 1)[None] for x in (k, v))
            ks, vs = torch.cat((kp, ks), dim=2), torch.cat((vp, vs), dim=2)  # [1, Hkv, P + L, D]
            # Query i (0-based within its sequence) sees every prefix key and own keys 0..i.
            visible = torch.ones(end - start, p_len + end - start, dtype=torch.bool, device=q.device).tril(p_len)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=visible, scale=scale, enable_gqa=True)
        out[start:end] = o[0].transpose(0, 1)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate half first, as the fused weight is laid out) -> silu(gate) * up [T, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
