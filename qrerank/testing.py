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
from qrerank.config import SEQ_CLS, ModelConfig
from qrerank.prompts import DEFAULT_RERANK_INSTRUCTION, EMBED_QUERY, END_OF_TEXT
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
KINDS = ("reranker", "seq-cls", "embedding")
VOCAB_SIZE = 151669  # Qwen3-Embedding-0.6B / Qwen3-Reranker-0.6B; covers every id of the bundled tokenizer
YES_ID, NO_ID = 9693, 2152  # "yes" and "no" in the bundled tokenizer
PAD_ID = 151643  # <|endoftext|>, the Qwen3 pad token
# The prompts of the official Qwen3-Embedding sentence-transformers files (config_sentence_transformers.json).
ST_PROMPTS = {"query": EMBED_QUERY.format(instruction=DEFAULT_RERANK_INSTRUCTION, text=""), "document": ""}


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
    max_position_embeddings: int = 40960,
    sentence_transformers: bool = False,
) -> Path:
    """Write config.json, tokenizer and random safetensors weights of a Qwen3 `preset` shape into `path`.

    kind "reranker" writes a Qwen3ForCausalLM checkpoint (tensors under `model.`, `lm_head.weight`
    when untied) with the reranker tokenizer; "seq-cls" the same weights (same seed) converted to
    Qwen3ForSequenceClassification as the public conversion does (vLLM's from_2_way_softmax: a
    `score.weight` [1, H] = W_yes - W_no computed in fp32, no LM head); "embedding" a Qwen3Model
    checkpoint (no prefix, no head) whose tokenizer appends `<|endoftext|>`. `sentence_transformers`
    (embedding only) adds the files of the official Qwen3-Embedding sentence-transformers layout.
    `shards > 1` splits the weights over several files with a `model.safetensors.index.json`, writing
    one shard at a time to bound memory.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown; choose one of {list(PRESETS)}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is unknown; choose one of {list(KINDS)}")
    if sentence_transformers and kind != "embedding":
        raise ValueError("sentence_transformers=True writes an embedding model's files; use kind='embedding'")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shape = dict(PRESETS[preset])
    if tie_word_embeddings is not None:
        shape["tie_word_embeddings"] = tie_word_embeddings
    if num_hidden_layers is not None:
        shape["num_hidden_layers"] = num_hidden_layers
    architecture = {"reranker": "Qwen3ForCausalLM", "seq-cls": SEQ_CLS, "embedding": "Qwen3Model"}[kind]
    config = {
        "architectures": [architecture],
        "model_type": "qwen3",
        "vocab_size": VOCAB_SIZE,
        **shape,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "use_sliding_window": False,
        "sliding_window": None,
        "bos_token_id": 151643,
        "eos_token_id": 151643 if kind == "embedding" else 151645,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if kind == "seq-cls":  # what transformers writes for num_labels=1; the pad id lets it batch
        config |= {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "pad_token_id": PAD_ID}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(path, kind)
    _write_weights(path, config, kind, seed, dtype, shards)
    if sentence_transformers:
        _write_sentence_transformers(path, config["hidden_size"])
    return path


def _tensor_shapes(config: dict, kind: str) -> dict[str, tuple[int, ...]]:
    """The loader's own table of expected tensors, so the two cannot drift apart; transformers, which
    loads these checkpoints in the parity tests, checks that the names are the real Qwen3 ones.
    For seq-cls: the original reranker's, which the conversion starts from."""
    shapes = expected_shapes(ModelConfig.from_dict(config), "" if kind == "embedding" else "model.")
    if kind != "embedding" and not config["tie_word_embeddings"]:
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
    per_shard = math.ceil(len(names) / shards)
    files = [f"model-{s + 1:05d}-of-{shards:05d}.safetensors" for s in range(shards)] if shards > 1 else []
    head = "model.embed_tokens.weight" if config["tie_word_embeddings"] else "lm_head.weight"
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for s, file in enumerate(files or ["model.safetensors"]):
        tensors = {n: _random_tensor(shapes[n], generator, dtype) for n in names[s * per_shard : (s + 1) * per_shard]}
        if kind == "seq-cls":
            if head in tensors:  # the conversion: the yes and no rows of the LM head, subtracted in fp32
                score = (tensors[head][YES_ID].float() - tensors[head][NO_ID].float()).to(dtype)[None]
            tensors.pop("lm_head.weight", None)
            if s == shards - 1:
                tensors["score.weight"] = score
        save_file(tensors, path / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, file)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    if files:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_sentence_transformers(path: Path, hidden_size: int) -> None:
    """modules.json and the module configs of the official Qwen3-Embedding repositories (the legacy
    `sentence_transformers.models.*` names and pooling flags they were saved with)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    pooling = {"word_embedding_dimension": hidden_size} | {f"pooling_mode_{m}": m == "lasttoken" for m in modes}
    files = {
        "modules.json": modules,
        "config_sentence_transformers.json": {
            "prompts": ST_PROMPTS,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        "sentence_bert_config.json": {"max_seq_length": 8192, "do_lower_case": False},
        "1_Pooling/config.json": pooling | {"include_prompt": True},
    }
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "2_Normalize").mkdir(exist_ok=True)
    for name, content in files.items():
        (path / name).write_text(json.dumps(content, indent=2))


def _write_tokenizer(path: Path, kind: str) -> None:
    """The bundled Qwen3 tokenizer; for embeddings, with the `$A <|endoftext|>` post-processor of Qwen3-Embedding."""
    text = bundled_tokenizer_json()
    if kind != "embedding":
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
