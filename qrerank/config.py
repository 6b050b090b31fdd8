"""ModelConfig: the Qwen3 hyper-parameters qrerank needs, read once from a checkpoint's config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrerank.files import read_json_object

# Far above every Qwen3 (the largest has 94 layers, width 4096, a 151,669-token vocabulary): a config past
# these is corrupt or hostile, and is refused before any table of expected tensors is built from it.
SIZE_LIMITS = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 1024,
    "max_position_embeddings": 1 << 24,
}
SEQ_CLS = "Qwen3ForSequenceClassification"  # a reranker converted to a one-label score head (score.weight)


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
    architecture: str | None = None  # config.json's architectures[0]: decides a seq-cls score head
    source: str = "config.json"  # the file, for error messages

    def __post_init__(self) -> None:
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= limit:
                raise ValueError(f"{self.source}: {name} must be an integer from 1 to {limit}, got {_show(value)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{self.source}: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"{self.source}: head_dim must be even for RoPE, got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{self.source}: {name} must be a finite number > 0, got {value}")

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Validate a config.json dict; reject every Qwen3 variant whose forward pass qrerank does not implement."""
        if raw.get("model_type") != "qwen3":
            raise ValueError(
                f"{source}: model_type is {raw.get('model_type')!r:.80}; qrerank runs only 'qwen3' checkpoints "
                "(Qwen3-Reranker, Qwen3-Embedding)"
            )
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act {raw['hidden_act']!r:.80} is not supported (Qwen3 uses 'silu')")
        if raw.get("attention_bias", False) is not False:
            raise ValueError(f"{source}: attention_bias=true is not supported (Qwen3 has no attention bias)")
        if raw.get("use_sliding_window", False) is not False:
            raise ValueError(f"{source}: use_sliding_window=true is not supported (Qwen3 attends to the full context)")
        # transformers < 5 writes rope_theta/rope_scaling at the top level, transformers >= 5 nests them
        # in rope_parameters; accept both, but only the default (unscaled) RoPE.
        rope, scaling = _object(raw, "rope_parameters", source), _object(raw, "rope_scaling", source)
        rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
        if rope_type != "default":
            raise ValueError(f"{source}: rope type {rope_type!r:.80} is not supported (only the default RoPE)")
        rope_theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        architectures = raw.get("architectures") or [None]
        if not isinstance(architectures, list) or not isinstance(architectures[0], (str, type(None))):
            raise ValueError(f"{source}: architectures must be a list of names, got {architectures!r:.80}")
        tie = raw.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise ValueError(f"{source}: tie_word_embeddings must be true or false, got {tie!r:.80}")
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
                rms_norm_eps=_number(raw.get("rms_norm_eps", 1e-6), "rms_norm_eps", source),
                rope_theta=_number(rope_theta, "rope_theta", source),
                max_position_embeddings=raw.get("max_position_embeddings", 40960),
                tie_word_embeddings=tie,
                architecture=architectures[0],
                source=source,
            )
        except KeyError as err:
            raise ValueError(f"{source}: missing required field {err.args[0]!r}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            raw = read_json_object(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json in checkpoint directory {path.parent}") from None
        return cls.from_dict(raw, str(path))


def _object(raw: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    """An optional nested object (null or absent: empty)."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {key} must be an object, got {value!r:.80}")
    return value


def _number(value: Any, name: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{source}: {name} must be a number, got {value!r:.80}")
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError(f"{source}: {name} must be a finite number > 0, got {_show(value)}") from None


def _show(value: Any) -> str:
    """A short repr: a huge integer by its size (its repr alone could take seconds, or raise past 4300 digits)."""
    if type(value) is int and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return f"{value!r:.80}"
