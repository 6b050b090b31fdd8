"""The Qwen3 forward pass on a packed batch: no padding, no KV cache; only last tokens reach the final norm.

Shared prefixes are packed as sequences of their own; the attention op lets each sequence attend to
its prefix's keys and values, and positions already continue after the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qrerank.batching import PackedBatch
from qrerank.config import ModelConfig
from qrerank.ops import Ops
from qrerank.reference import rope_cache


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [H]
    qkv: torch.Tensor  # [(Hq + 2 Hkv) * D, H]: q_proj, k_proj, v_proj rows stacked at load
    q_norm: torch.Tensor  # [D]
    k_norm: torch.Tensor  # [D]
    o_proj: torch.Tensor  # [H, Hq * D]
    post_norm: torch.Tensor  # [H]
    gate_up: torch.Tensor  # [2 I, H]: gate_proj rows then up_proj rows
    down: torch.Tensor  # [H, I]


@dataclass
class ModelWeights:
    embed: torch.Tensor  # [V, H]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [H]
    head_rows: torch.Tensor | None  # [K, H] fp32: the LM-head rows of the requested token ids, nothing else


class Qwen3:
    """Functional Qwen3 decoder; `forward` maps a PackedBatch to final-normed last-token states [B, H].

    With the CPU ops the result is a view of the engine's workspace: read it before the next forward.
    """

    def __init__(self, config: ModelConfig, weights: ModelWeights, ops: Ops, max_positions: int) -> None:
        self.config = config
        self.weights = weights
        self.ops = ops
        self.rope = rope_cache(config.head_dim, config.rope_theta, max_positions, weights.embed.device)
        self.scale = config.head_dim**-0.5

    @property
    def device(self) -> torch.device:
        return self.weights.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.embed.dtype

    @torch.inference_mode()
    def forward(self, batch: PackedBatch) -> torch.Tensor:
        cfg, ops, eps = self.config, self.ops, self.config.rms_norm_eps
        layers = self.weights.layers
        last = batch.last_tokens  # [B]: each output sequence's final token
        h = F.embedding(batch.input_ids, self.weights.embed)  # [T, H]
        residual = h
        h = ops.rms_norm(h, layers[0].input_norm, eps)
        for i, layer in enumerate(layers):
            if i > 0:
                h, residual = ops.add_rms_norm(h, residual, layer.input_norm, eps)
            qkv = ops.linear(h, layer.qkv)  # [T, (Hq + 2 Hkv) * D]
            q, k, v = ops.qk_norm_rope(
                qkv, layer.q_norm, layer.k_norm, self.rope, batch.positions,
                cfg.num_attention_heads, cfg.num_key_value_heads, eps,
            )  # fmt: skip
            o = ops.attention(
                q, k, v, batch.cu_seqlens, batch.max_seqlen, self.scale, batch.prefix_offsets, batch.prefix_lens
            ).flatten(1)  # [T, Hq * D]
            if i == len(layers) - 1:
                # Past the last attention nothing mixes tokens and only final tokens are read: the last
                # o_proj, MLP and norms run on [B] rows instead of [T].
                o, residual = o[last], residual[last]
            h = ops.linear(o, layer.o_proj)
            h, residual = ops.add_rms_norm(h, residual, layer.post_norm, eps)
            h = ops.linear(ops.silu_mul(ops.linear(h, layer.gate_up)), layer.down)
        return ops.add_rms_norm(h, residual, self.weights.norm, eps)[0]  # [B, H]
