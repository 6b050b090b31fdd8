"""Packed causal GQA attention on CPU, written into a caller's buffer (the twin, reference.attention, allocates one).

Same per-sequence SDPA calls as the twin; what differs is where results go.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def attention_into(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    prefix_offsets: torch.Tensor | None = None,
    prefix_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """reference.attention(q, k, v, cu_seqlens, _, scale, prefix_offsets, prefix_lens) written into out [T, Hq, D]."""
    bounds = cu_seqlens.tolist()
    if prefix_offsets is None or prefix_lens is None:
        prefixes = [(0, 0)] * (len(bounds) - 1)
    else:
        prefixes = list(zip(prefix_offsets.tolist(), prefix_lens.tolist()))
    for (start, end), (p_start, p_len) in zip(itertools.pairwise(bounds), prefixes):
        if start == end:
            continue
        qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))
        if p_len == 0:
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        else:
            kp, vp = (x[p_start : p_start + p_len].transpose(0, 1)[None] for x in (k, v))
            ks, vs = torch.cat((kp, ks), dim=2), torch.cat((vp, vs), dim=2)
            visible = torch.ones(end - start, p_len + end - start, dtype=torch.bool).tril(p_len)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=visible, scale=scale, enable_gqa=True)
        out[start:end] = o[0].transpose(0, 1)
    return out
