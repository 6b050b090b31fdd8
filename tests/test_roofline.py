"""The benchmark's FLOP yardstick, counted by hand for one small shape."""

from __future__ import annotations

from qrerank.bench.roofline import executed_flops, model_flops
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


def test_executed_flops_count_a_shared_prefix_once_and_the_last_layer_on_final_tokens() -> None:
    config = ModelConfig.from_dict({**PRESETS["tiny"], "model_type": "qwen3", "vocab_size": 151669})
    h, inter, layers, q, kv = 64, 160, 2, 4 * 64, 2 * 64
    qkv, rest = h * q + 2 * h * kv, q * h + 3 * h * inter
    # prefix of 2 shared by members of 5 and 3 tokens: 2 + 3 + 1 = 6 packed tokens, 2 outputs
    tokens, outputs = 6, 2
    pairs = 3 + (3 * 2 + 6) + (1 * 2 + 1)  # the prefix causally; each member's own tokens over prefix + itself
    linear = 2 * (layers * qkv * tokens + ((layers - 1) * tokens + outputs) * rest)
    assert executed_flops(config, [(2, [5, 3])]) == linear + layers * 2 * 2 * pairs * q
    # without a prefix and with one-token sequences, the executed work is the nominal work
    assert executed_flops(config, [(0, [1, 1])]) == model_flops(config, [1, 1])
