"""Tokenizer loading: the checkpoint's own tokenizer.json, or the Qwen3 tokenizer bundled with qrerank."""

from __future__ import annotations

import lzma
import os
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer

from qrerank.config import ModelConfig
from qrerank.files import MAX_TOKENIZER_BYTES, read_bytes

BUNDLED_TOKENIZER = "qwen3-tokenizer.json.xz"


def bundled_tokenizer_json() -> str:
    """The Qwen3 tokenizer shipped as package data (the Qwen3-Reranker variant: no post-processor)."""
    data = resources.files("qrerank").joinpath("data", BUNDLED_TOKENIZER).read_bytes()
    return lzma.decompress(data).decode("utf-8")


def load_tokenizer(checkpoint_dir: Path, config: ModelConfig) -> Tokenizer:
    """Load `tokenizer.json` from the checkpoint, else the bundled Qwen3 one; check the model covers its ids.

    Only a checkpoint with no tokenizer.json at all gets the bundled one: a tokenizer.json that is
    there but unreadable (broken, a FIFO, a directory, a dangling link) is an error, never replaced.
    """
    path = checkpoint_dir / "tokenizer.json"
    if os.path.lexists(path):
        tokenizer, source = _read_tokenizer(path), str(path)
    else:
        tokenizer, source = Tokenizer.from_str(bundled_tokenizer_json()), "the bundled Qwen3 tokenizer"
    # An id past the embedding table would index out of range on the device (or, worse, silently
    # read another row through a kernel without bounds checks): refuse the pair at load time.
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > config.vocab_size:
        raise ValueError(
            f"{source} has {size} tokens but config.json vocab_size is {config.vocab_size}: "
            "the tokenizer does not belong to this checkpoint"
        )
    return tokenizer


def _read_tokenizer(path: Path) -> Tokenizer:
    try:
        text = read_bytes(path, MAX_TOKENIZER_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path} is a link to a file that does not exist") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err}") from None
    try:
        return Tokenizer.from_str(text)
    except Exception as err:  # the tokenizers library raises a bare Exception for every parse error
        raise ValueError(f"{path} is not a tokenizers tokenizer.json: {err}") from None
