"""The sentence-transformers files of an embedding checkpoint: its named prompts, checked against what qrerank runs.

The official Qwen3-Embedding repositories are also sentence-transformers models: `modules.json` lists
Transformer -> Pooling (last token) -> Normalize, and `config_sentence_transformers.json` holds named
prompts, raw text prefixes such as "Instruct: ...\\nQuery:". qrerank computes that pipeline itself (and
normalises unless asked not to); a folder whose modules compute something else (mean pooling, a Dense
projection, a cross-encoder score) is refused instead of being embedded differently from what it says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrerank.files import read_json

_PIPELINES = (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"])


@dataclass(frozen=True)
class SentenceTransformersFolder:
    prompts: dict[str, str]  # name -> text prefix
    default_prompt_name: str | None  # the prompt sentence-transformers applies when the caller names none


def read_sentence_transformers(path: Path) -> SentenceTransformersFolder | None:
    """The folder's sentence-transformers metadata; None when it has no modules.json (a plain checkpoint)."""
    modules_file = path / "modules.json"
    if not os.path.lexists(modules_file):
        return None
    modules = _read(modules_file)
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) and isinstance(m.get("path"), str) for m in modules
    ):
        raise ValueError(f"{modules_file} must be a list of modules, each with a 'type' and a 'path'")
    # "sentence_transformers.models.Pooling" (the official files) or a newer module path: the class name counts.
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds not in _PIPELINES or modules[0]["path"] != "":
        raise ValueError(
            f"{modules_file} lists the modules {kinds}; qrerank embeds as Qwen3-Embedding does: the Transformer "
            "at the folder's root, last-token Pooling, optionally Normalize, and nothing else"
        )
    _check_pooling(path, modules[1]["path"])
    return _read_prompts(path / "config_sentence_transformers.json")


def _check_pooling(path: Path, folder: str) -> None:
    if Path(folder).name != folder or folder in ("", ".", ".."):
        raise ValueError(f"{path / 'modules.json'} places Pooling in {folder!r:.200}, not a folder of {path}")
    file = path / folder / "config.json"
    config = _read(file)
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object")
    # sentence-transformers >= 5 writes "pooling_mode"; the official files have one boolean flag per mode.
    mode = config.get("pooling_mode")
    if mode is None:
        mode = [
            key.removeprefix("pooling_mode_") for key, on in config.items() if key.startswith("pooling_mode_") and on
        ]
    if (mode if isinstance(mode, list) else [mode]) != ["lasttoken"]:
        raise ValueError(
            f"{file} sets pooling mode {mode!r:.80}; qrerank embeds by last-token pooling only, as Qwen3-Embedding does"
        )


def _read_prompts(file: Path) -> SentenceTransformersFolder:
    config = _read(file) if os.path.lexists(file) else {}
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object")
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ValueError(f"{file}: 'prompts' must map prompt names to texts")
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ValueError(f"{file}: default_prompt_name {default!r:.80} is not one of its prompts {sorted(prompts)}")
    return SentenceTransformersFolder(prompts=dict(prompts), default_prompt_name=default)


def _read(file: Path) -> Any:
    try:
        return read_json(file)
    except FileNotFoundError:
        raise ValueError(f"{file} is missing, but the folder's modules.json needs it") from None
