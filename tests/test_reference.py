"""The torch reference twins against the transformers Qwen3 modules and dense attention, on odd shapes.

These twins are what the Triton kernels will be tested against, so they are pinned here first.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, apply_rotary_pos_emb

from qrerank import reference

TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def _packed_lengths(lengths: list[int]) -> torch.Tensor:
    return F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,hidden", [(1, 64), (7, 33), (130, 1024)])
def test_rms_norm_matches_transformers(dtype: torch.dtype, rows: int, hidden: int) -> None:
    torch.manual_seed(0)
    module = Qwen3RMSNorm(hidden, eps=1e-6)
    module.weight.data = (1 + 0.3 * torch.randn(hidden)).to(dtype)
    x = (3 * torch.randn(rows, hidden)).to(dtype)
    expected = module.to(dtype)(x)
    got = reference.rms_norm(x, module.weight.data, 1e-6)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # same operations in the same order


def test_add_rms_norm_returns_sum_and_norm() -> None:
    x, residual, w = torch.randn(5, 48), torch.randn(5, 48), torch.rand(48)
    normed, summed = reference.add_rms_norm(x, residual, w, 1e-6)
    torch.testing.assert_close(summed, x + residual, rtol=0, atol=0)
    torch.testing.assert_close(normed, reference.rms_norm(x + residual, w, 1e-6), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 64), (4, 2, 128), (8, 2, 32)])
def test_qk_norm_rope_matches_transformers(dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int) -> None:
    torch.manual_seed(1)
    t, theta, eps = 11, 1e6, 1e-6
    qkv = torch.randn(t, (heads + 2 * kv_heads) * head_dim).to(dtype)
    q_w, k_w = (1 + 0.2 * torch.randn(head_dim)).to(dtype), (1 + 0.2 * torch.randn(head_dim)).to(dtype)
    positions = torch.tensor([0, 1, 2, 0, 1, 0, 5, 6, 7, 8, 300])
    rope = reference.rope_cache(head_dim, theta, 512, torch.device("cpu"))
    q, k, v = reference.qk_norm_rope(qkv, q_w, k_w, rope, positions, heads, kv_heads, eps)

    # transformers: q_norm/k_norm on [.., H, D], then rotate_half RoPE with cos/sin cast to the dtype
    hq, hk, hv = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q_norm, k_norm = Qwen3RMSNorm(head_dim, eps).to(dtype), Qwen3RMSNorm(head_dim, eps).to(dtype)
    q_norm.weight.data, k_norm.weight.data = q_w, k_w
    hq = q_norm(hq.view(1, t, heads, head_dim)).transpose(1, 2)
    hk = k_norm(hk.view(1, t, kv_heads, head_dim)).transpose(1, 2)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = positions[None, :, None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    eq, ek = apply_rotary_pos_emb(hq, hk, emb.cos().to(dtype), emb.sin().to(dtype))
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(q, eq[0].transpose(0, 1), rtol=tol, atol=tol)
    torch.testing.assert_close(k, ek[0].transpose(0, 1), rtol=tol, atol=tol)
    torch.testing.assert_close(v, hv.view(t, kv_heads, head_dim), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lengths", [[1], [1, 1, 1], [5, 17, 1, 64, 3], [129]])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_attention_matches_dense_block_causal(dtype: torch.dtype, lengths: list[int], group: int) -> None:
    """Packed per-sequence attention equals one dense attention with a block-diagonal causal mask."""
    torch.manual_seed(2)
    kv_heads, head_dim = 2, 64
    t = sum(lengths)
    q = torch.randn(t, kv_heads * group, head_dim).to(dtype)
    k, v = torch.randn(t, kv_heads, head_dim).to(dtype), torch.randn(t, kv_heads, head_dim).to(dtype)
    cu = _packed_lengths(lengths)
    got = reference.attention(q, k, v, cu, max(lengths), head_dim**-0.5)

    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    idx = torch.arange(t)
    mask = (seq[:, None] == seq[None, :]) & (idx[:, None] >= idx[None, :])  # [T, T]
    kk, vv = (x.float().repeat_interleave(group, dim=1).transpose(0, 1) for x in (k, v))
    expected = F.scaled_dot_product_attention(q.float().transpose(0, 1), kk, vv, attn_mask=mask, scale=head_dim**-0.5)
    tol = TOLERANCE[dtype] * 2
    torch.testing.assert_close(got.float(), expected.transpose(0, 1), rtol=tol, atol=tol)


@pytest.mark.parametrize("prefix_len", [1, 2, 13])
@pytest.mark.parametrize("lengths", [[1], [4, 1, 9]])
def test_attention_after_shared_prefix_equals_attention_on_the_whole_sequence(
    prefix_len: int, lengths: list[int]
) -> None:
    """Each sequence attending to a shared prefix packed once = that sequence with the prefix prepended."""
    torch.manual_seed(3)
    heads, kv_heads, head_dim = 4, 2, 64
    seqs = [torch.randn(prefix_len + n, 2 * kv_heads + heads, head_dim) for n in lengths]
    seqs = [torch.cat([seqs[0][:prefix_len], s[prefix_len:]]) for s in seqs]  # the same prefix rows in each
    full = [reference.attention(*s.split([heads, kv_heads, kv_heads], 1), _packed_lengths([len(s)]), len(s), 0.125)
            for s in seqs]  # fmt: skip
    # packed: the prefix once as its own sequence, then each suffix pointing at it
    packed = torch.cat([seqs[0][:prefix_len]] + [s[prefix_len:] for s in seqs])
    q, k, v = packed.split([heads, kv_heads, kv_heads], 1)
    cu = _packed_lengths([prefix_len, *lengths])
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    lens = torch.tensor([0] + [prefix_len] * len(lengths), dtype=torch.int32)
    got = reference.attention(q, k, v, cu, max(lengths), 0.125, offsets, lens)
    torch.testing.assert_close(got[:prefix_len], full[0][:prefix_len], rtol=1e-6, atol=1e-6)
    for i, (start, end) in enumerate(zip(cu[1:-1].tolist(), cu[2:].tolist())):
        torch.testing.assert_close(got[start:end], full[i][prefix_len:], rtol=1e-6, atol=1e-6)


def test_silu_mul_splits_gate_then_up() -> None:
    gate, up = torch.randn(3, 40), torch.randn(3, 40)
    torch.testing.assert_close(reference.silu_mul(torch.cat([gate, up], dim=-1)), F.silu(gate) * up, rtol=0, atol=0)
