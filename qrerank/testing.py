"""Random-weight Qwen3 checkpoints of the real shapes, with the real Qwen3 tokenizer, for tests and benchmarks.

No model weights can be downloaded everywhere qrerank is tested; random weights exercise exactly the
same code and FLOPs. The values are scaled so that scores and embeddings are well spread (a reranker
whose every score is 0.5 would hide ranking bugs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, processors

from qrerank.checkpoint import expected_shapes
from qrerank.config import ModelConfig
from qrerank.prompts import END_OF_TEXT
from qrerank.tokenize import bundled_tokenizer_json

PRESETS: dict[str, dict[str, int | bool]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,  # the smallest head size the attention kernel is built for
        tie_word_embeddings=True,
    ),
    "0.6B": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "4B": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "8B": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
    ),
}
KINDS = ("reranker", "embedding")
VOCAB_SIZE = 151669  # Qwen3-Embedding-0.6B / Qwen3-Reranker-0.6B; covers every id of the bundled tokenizer


def random_checkpoint(
    path: str | os.PathLike[str],
    preset: str = "tiny",
    kind: str = "reranker",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    shards: int = 1,
    tie_word_embeddings: bool | None = None,
    num_hidden_layers: int | None = None,
) -> Path:
    """Write config.json, tokenizer and random safetensors weights of a Qwen3 `preset` shape into `path`.

    kind "reranker" writes a Qwen3ForCausalLM checkpoint (tensors under `model.`, `lm_head.weight`
    when untied) with the reranker tokenizer; "embedding" a Qwen3Model checkpoint (no prefix, no
    head) whose tokenizer appends `<|endoftext|>`. `shards > 1` splits the weights over several
    files with a `model.safetensors.index.json`, writing one shard at a time to bound memory.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown; choose one of {list(PRESETS)}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is unknown; choose one of {list(KINDS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shape = dict(PRESETS[preset])
    if tie_word_embeddings is not None:
        shape["tie_word_embeddings"] = tie_word_embeddings
    if num_hidden_layers is not None:
        shape["num_hidden_layers"] = num_hidden_layers
    config = {
        "architectures": ["Qwen3ForCausalLM" if kind == "reranker" else "Qwen3Model"],
        "model_type": "qwen3",
        "vocab_size": VOCAB_SIZE,
        **shape,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "use_sliding_window": False,
        "sliding_window": None,
        "bos_token_id": 151643,
        "eos_token_id": 151645 if kind == "reranker" else 151643,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(path, kind)
    _write_weights(path, config, kind, seed, dtype, shards)
    return path


def _tensor_shapes(config: dict, kind: str) -> dict[str, tuple[int, ...]]:
    """The loader's own table of expected tensors, so the two cannot drift apart; transformers, which
    loads these checkpoints in the parity tests, checks that the names are the real Qwen3 ones."""
    shapes = expected_shapes(ModelConfig.from_dict(config), "model." if kind == "reranker" else "")
    if kind == "reranker" and not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (config["vocab_size"], config["hidden_size"])
    return shapes


def _random_tensor(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    if len(shape) == 1:  # norm weights: around 1, perturbed so a skipped or misplaced norm shows
        return (1.0 + 0.2 * torch.randn(shape, generator=generator)).to(dtype)
    # Embedding/LM-head rows ~ 1/sqrt(H): with unit-RMS hidden states the yes-no logit difference is O(1).
    # Projections ~ 1/sqrt(fan_in): activations keep their scale through the layers.
    fan = shape[1]
    return (torch.randn(shape, generator=generator) / math.sqrt(fan)).to(dtype)


def _write_weights(path: Path, config: dict, kind: str, seed: int, dtype: torch.dtype, shards: int) -> None:
    shapes = _tensor_shapes(config, kind)
    names = list(shapes)
    shards = max(1, min(shards, len(names)))
    generator = torch.Generator().manual_seed(seed)
    if shards == 1:
        tensors = {n: _random_tensor(shapes[n], generator, dtype) for n in names}
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map: dict[str, str] = {}
    per_shard = math.ceil(len(names) / shards)
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        chunk = names[s * per_shard : (s + 1) * per_shard]
        save_file(
            {n: _random_tensor(shapes[n], generator, dtype) for n in chunk}, path / file, metadata={"format": "pt"}
        )
        weight_map |= dict.fromkeys(chunk, file)
    total = sum(math.prod(s) for s in shapes.values()) * dtype.itemsize
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_tokenizer(path: Path, kind: str) -> None:
    """The bundled Qwen3 tokenizer; for embeddings, with the `$A <|endoftext|>` post-processor of Qwen3-Embedding."""
    text = bundled_tokenizer_json()
    if kind == "reranker":
        (path / "tokenizer.json").write_text(text, encoding="utf-8")
    else:
        tokenizer = Tokenizer.from_str(text)
        eos = tokenizer.token_to_id(END_OF_TEXT)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {END_OF_TEXT}:0",
            pair=f"$A:0 {END_OF_TEXT}:0 $B:1 {END_OF_TEXT}:1",
            special_tokens=[(END_OF_TEXT, eos)],
        )
        tokenizer.save(str(path / "tokenizer.json"))
    with resources.as_file(resources.files("qrerank").joinpath("data", "tokenizer_config.json")) as src:
        shutil.copyfile(src, path / "tokenizer_config.json")
