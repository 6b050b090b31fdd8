"""The benchmark's FLOP yardstick, counted by hand for one small shape."""

from __future__ import annotations

from qrerank.bench.roofline import model_flops
from qrerank.config import ModelConfig
from qrerank.testing import PRESETS


def test_model_flops_counts_linear_layers_and_causal_attention() -> None:
    config = ModelConfig.from_dict({**PRESETS["tiny"], "model_type": "qwen3", "vocab_size": 151669})
    h, inter, layers, q, kv = 64, 160, 2, 4 * 64, 2 * 64
    lengths = [3, 1]
    linear = 2 * 4 * (h * q + 2 * h * kv + q * h + 3 * h * inter)  # 4 tokens through every projection
    attention = 2 * 2 * (6 + 1) * q  # QK^T and PV over 3*4/2 + 1 causal pairs, every query head
    assert model_flops(config, lengths) == layers * (linear + attention)
    assert model_flops(config, []) == 0
