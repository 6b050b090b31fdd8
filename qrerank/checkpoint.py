"""Checkpoints: find one (local directory or Hugging Face hub id), then load its weights strictly and fused."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from qrerank.config import SEQ_CLS, ModelConfig
from qrerank.files import read_json_object
from qrerank.model import LayerWeights, ModelWeights
from qrerank.safetensors_reader import TensorEntry, copy_rows, read_header, read_tensor
from qrerank.tokenize import load_tokenizer

_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    tensors: dict[str, TensorEntry]  # every tensor stored, by name, as the files declare it

    @classmethod
    def open(cls, model: str | os.PathLike[str]) -> Checkpoint:
        """Read config, tokenizer and tensor headers; no weight data is touched yet."""
        path = locate(model)
        config = ModelConfig.from_file(path / "config.json")
        return cls(path, config, load_tokenizer(path, config), _read_headers(path))


def locate(model: str | os.PathLike[str]) -> Path:
    """A local checkpoint directory, or a hub id resolved through huggingface_hub's cache."""
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a directory path or a Hugging Face hub id, got {type(model).__name__}")
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"model {str(model)!r} is a file; pass the checkpoint directory that holds config.json")
    name = str(model)
    if os.path.isabs(name) or name.startswith(".") or name.count("/") != 1:
        raise ValueError(
            f"model {name!r} is neither an existing directory nor a hub id like 'Qwen/Qwen3-Reranker-0.6B'"
        )
    from huggingface_hub import constants, snapshot_download

    try:
        # honours HF_HUB_OFFLINE / HF_HOME; only safetensors weights are ever fetched
        return Path(snapshot_download(name, allow_patterns=_HUB_FILES))
    except Exception as err:
        # huggingface_hub reads HF_HUB_OFFLINE once, at import: report the setting it actually used.
        offline = " (HF_HUB_OFFLINE is set: only cached snapshots can be used)" if constants.HF_HUB_OFFLINE else ""
        raise ValueError(
            f"model {name!r} is not a local directory and could not be fetched from the Hugging Face hub{offline}: "
            f"{type(err).__name__}: {err}"
        ) from err


def _read_headers(path: Path) -> dict[str, TensorEntry]:
    index = path / "model.safetensors.index.json"
    if os.path.lexists(index):
        weight_map = _read_weight_map(index)
        files = sorted({path / name for name in weight_map.values()})
    else:
        weight_map, files = {}, sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        found = f" (found {', '.join(pickles)})" if pickles else ""
        raise ValueError(
            f"no .safetensors weights in {path}{found}: qrerank loads only safetensors, because pickle "
            "checkpoints (.bin/.pt) can run arbitrary code when loaded; convert them with safetensors first"
        )
    entries: dict[str, TensorEntry] = {}
    for file in files:
        if not file.exists():
            raise ValueError(f"{index} lists {file.name}, which is not in {path}")
        for name, entry in read_header(file).items():
            if name in entries:
                raise ValueError(f"tensor {name!r} is stored twice ({entries[name].path.name} and {file.name})")
            if weight_map and weight_map.get(name) != file.name:
                raise ValueError(
                    f"tensor {name!r} is in {file.name} but {index.name} places it in {weight_map.get(name)!r}"
                )
            entries[name] = entry
    missing_from_files = sorted(set(weight_map) - set(entries))
    if missing_from_files:
        raise ValueError(f"{index.name} lists tensor {missing_from_files[0]!r}, which none of its files holds")
    return entries


def _read_weight_map(index: Path) -> dict[str, str]:
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError(f"{index} has no 'weight_map' object mapping tensor names to file names")
    # Shards live beside the index. The check is on the name, before any file is opened: a symlink
    # (the Hugging Face cache links every file into its blob store) is followed as usual.
    for name in sorted(set(weight_map.values())):
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name or "\x00" in name:
            raise ValueError(f"{index} names shard {name!r:.200}; shards must be file names in {index.parent}")
    return weight_map


def expected_shapes(config: ModelConfig, prefix: str) -> dict[str, tuple[int, ...]]:
    """Every backbone tensor a Qwen3 checkpoint of `config` stores, by name (under `prefix`), with its shape.

    In the order of the forward pass (embedding, layers, final norm), as transformers writes them.
    """
    c = config
    shapes = {f"{prefix}embed_tokens.weight": (c.vocab_size, c.hidden_size)}
    for i in range(c.num_hidden_layers):
        p = f"{prefix}layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (c.hidden_size,),
            p + "self_attn.q_proj.weight": (c.q_size, c.hidden_size),
            p + "self_attn.k_proj.weight": (c.kv_size, c.hidden_size),
            p + "self_attn.v_proj.weight": (c.kv_size, c.hidden_size),
            p + "self_attn.o_proj.weight": (c.hidden_size, c.q_size),
            p + "self_attn.q_norm.weight": (c.head_dim,),
            p + "self_attn.k_norm.weight": (c.head_dim,),
            p + "post_attention_layernorm.weight": (c.hidden_size,),
            p + "mlp.gate_proj.weight": (c.intermediate_size, c.hidden_size),
            p + "mlp.up_proj.weight": (c.intermediate_size, c.hidden_size),
            p + "mlp.down_proj.weight": (c.hidden_size, c.intermediate_size),
        }
    shapes[f"{prefix}norm.weight"] = (c.hidden_size,)
    return shapes


_LAYER_NAME = re.compile(r"(?:model\.)?layers\.(\d{1,9})\.")


def head_kind(config: ModelConfig) -> str:
    """How a reranker scores: "score" for a Qwen3ForSequenceClassification conversion, whose one-row
    `score.weight` is W_yes - W_no; "lm" for an LM head (`lm_head.weight`, or the tied embedding)."""
    return "score" if config.architecture == SEQ_CLS else "lm"


def _check_names_and_shapes(ckpt: Checkpoint, needs_head: bool) -> str:
    """Return the tensor-name prefix ('model.' for Qwen3ForCausalLM, '' for Qwen3Model) after strict checks."""
    names = set(ckpt.tensors)
    c = ckpt.config
    # Before a table of expected tensors is built from config.json, its layer count must match the files'.
    stored_layers = {m.group(1) for m in map(_LAYER_NAME.match, names) if m}
    if c.num_hidden_layers > len(stored_layers):
        raise ValueError(
            f"{c.source} declares {c.num_hidden_layers} layers, but the checkpoint {ckpt.path} stores tensors "
            f"of only {len(stored_layers)}"
        )
    prefix = "model." if any(n.startswith("model.") for n in names) else ""
    expected = expected_shapes(c, prefix)
    # The head is required when scores are needed (an LM head only when untied); otherwise tolerated
    # (tied checkpoints sometimes store a copy, which transformers also ignores) but still shape-checked.
    if head_kind(c) == "score":
        head, required = {"score.weight": (1, c.hidden_size)}, needs_head
    else:
        head, required = {"lm_head.weight": (c.vocab_size, c.hidden_size)}, needs_head and not c.tie_word_embeddings
    optional = {} if required else head
    expected |= head if required else {}
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected) - set(optional))
    problems = [f"missing tensor {n!r}" for n in missing] + [f"unexpected tensor {n!r}" for n in unexpected]
    for name in sorted(names & (set(expected) | set(optional))):
        want, got = expected.get(name) or optional[name], ckpt.tensors[name].shape
        if name == "score.weight" and got == (2, c.hidden_size):
            problems.append(
                "tensor 'score.weight' is a two-label head [2, H]; qrerank loads the published Qwen3-Reranker "
                "conversions, which store one row W_yes - W_no (num_labels=1), because a two-label head's "
                "meaning (which row is 'yes', softmax or not) is not recorded in the checkpoint"
            )
        elif got != want:
            problems.append(f"tensor {name!r} has shape {list(got)}, expected {list(want)}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(f"checkpoint {ckpt.path} does not match its config.json: {shown}")
    return prefix


def load_weights(
    ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, head_token_ids: Sequence[int] | None = None
) -> ModelWeights:
    """Load every tensor into `dtype` on `device`, fusing q/k/v and gate/up into single matrices.

    With `head_token_ids`, only those rows of the LM head are read (fp32), for a yes/no style head; a
    checkpoint whose head_kind is "score" has no LM head, and its score row [1, H] is read instead.
    """
    prefix = _check_names_and_shapes(ckpt, needs_head=head_token_ids is not None)
    t = ckpt.tensors

    def load(name: str) -> torch.Tensor:
        return read_tensor(t[prefix + name], dtype, device)

    def fused(*names: str) -> torch.Tensor:
        entries = [t[prefix + n] for n in names]
        out = torch.empty((sum(e.shape[0] for e in entries), entries[0].shape[1]), dtype=dtype, device=device)
        row = 0
        for e in entries:
            copy_rows(e, out[row : row + e.shape[0]])
            row += e.shape[0]
        return out

    layers = []
    for i in range(ckpt.config.num_hidden_layers):
        p = f"layers.{i}."
        layers.append(
            LayerWeights(
                input_norm=load(p + "input_layernorm.weight"),
                qkv=fused(p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"),
                q_norm=load(p + "self_attn.q_norm.weight"),
                k_norm=load(p + "self_attn.k_norm.weight"),
                o_proj=load(p + "self_attn.o_proj.weight"),
                post_norm=load(p + "post_attention_layernorm.weight"),
                gate_up=fused(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                down=load(p + "mlp.down_proj.weight"),
            )
        )
    head_rows = None
    if head_token_ids is not None and head_kind(ckpt.config) == "score":
        head_rows = read_tensor(t["score.weight"], dtype, device)
    elif head_token_ids is not None:
        source = t[prefix + "embed_tokens.weight"] if ckpt.config.tie_word_embeddings else t["lm_head.weight"]
        head_rows = torch.empty((len(head_token_ids), ckpt.config.hidden_size), dtype=dtype, device=device)
        for row, token in enumerate(head_token_ids):
            copy_rows(source, head_rows[row : row + 1], token, token + 1)
    if head_rows is not None:
        # Rounded to the model dtype first (as the weights transformers would use), then the dot in fp32.
        head_rows = head_rows.float()
    return ModelWeights(embed=load("embed_tokens.weight"), layers=layers, norm=load("norm.weight"), head_rows=head_rows)
