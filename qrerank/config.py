"""ModelConfig: the Qwen3 hyper-parameters qrerank needs, read once from a checkpoint's config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"config.json: {name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"config.json: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"config.json: head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(
                f"config.json: rms_norm_eps ({self.rms_norm_eps}) and rope_theta ({self.rope_theta}) must be > 0"
            )

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Validate a config.json dict; reject every Qwen3 variant whose forward pass qrerank does not implement."""
        if raw.get("model_type") != "qwen3":
            raise ValueError(
                f"config.json: model_type is {raw.get('model_type')!r}; qrerank runs only 'qwen3' checkpoints "
                "(Qwen3-Reranker, Qwen3-Embedding)"
            )
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act {raw['hidden_act']!r} is not supported (Qwen3 uses 'silu')")
        if raw.get("attention_bias", False):
            raise ValueError("config.json: attention_bias=true is not supported (Qwen3 has no attention bias)")
        if raw.get("use_sliding_window", False):
            raise ValueError(
                "config.json: use_sliding_window=true is not supported (Qwen3 attends to the full context)"
            )
        # transformers < 5 writes rope_theta/rope_scaling at the top level, transformers >= 5 nests them
        # in rope_parameters; accept both, but only the default (unscaled) RoPE.
        rope = raw.get("rope_parameters") or {}
        scaling = raw.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
        if rope_type != "default":
            raise ValueError(f"config.json: rope type {rope_type!r} is not supported (only the default RoPE)")
        rope_theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        try:
            heads = raw["num_attention_heads"]
            return cls(
                vocab_size=raw["vocab_size"],
                hidden_size=raw["hidden_size"],
                intermediate_size=raw["intermediate_size"],
                num_hidden_layers=raw["num_hidden_layers"],
                num_attention_heads=heads,
                num_key_value_heads=raw.get("num_key_value_heads", heads),
                head_dim=raw.get("head_dim", 128),  # transformers' Qwen3Config default, not hidden/heads
                rms_norm_eps=_number(raw.get("rms_norm_eps", 1e-6), "rms_norm_eps"),
                rope_theta=_number(rope_theta, "rope_theta"),
                max_position_embeddings=raw.get("max_position_embeddings", 40960),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            )
        except KeyError as err:
            raise ValueError(f"config.json: missing required field {err.args[0]!r}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json in checkpoint directory {path.parent}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
        return cls.from_dict(raw)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"config.json: {name} must be a number, got {value!r}")
    return float(value)
