"""`qrerank.score` / `qrerank.embed`: one-call use, keeping one engine per (model, device, dtype, limits)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from qrerank.embedder import Embedder
from qrerank.engine import DEFAULT_MAX_BATCH_TOKENS
from qrerank.reranker import Reranker
from qrerank.validation import resolve_device, resolve_dtype

DEFAULT_RERANKER = "Qwen/Qwen3-Reranker-0.6B"
DEFAULT_EMBEDDER = "Qwen/Qwen3-Embedding-0.6B"
_ENGINE_ARGS = (
    "device",
    "dtype",
    "max_length",
    "max_batch_tokens",
    "backend",
    "share_prefix",
    "cuda_graphs",
    "warmup",
    "special_tokens",
)


def score(
    query: str, docs: Sequence[str], *, model: str | os.PathLike[str] = DEFAULT_RERANKER, **kwargs: Any
) -> np.ndarray:
    """`Reranker(model, **engine_args).score(query, docs, **rest)` on a cached engine.

    Engine arguments: device, dtype, max_length, max_batch_tokens, backend, share_prefix, cuda_graphs,
    warmup, special_tokens; the rest go to `score`.
    """
    engine_kwargs, call_kwargs = _split(kwargs)
    return _engine(Reranker, os.fspath(model), **engine_kwargs).score(query, docs, **call_kwargs)


def embed(
    texts: str | Sequence[str], *, model: str | os.PathLike[str] = DEFAULT_EMBEDDER, **kwargs: Any
) -> np.ndarray | torch.Tensor:
    """`Embedder(model, **engine_args).embed(texts, **rest)` on a cached engine (engine arguments as for `score`)."""
    engine_kwargs, call_kwargs = _split(kwargs)
    return _engine(Embedder, os.fspath(model), **engine_kwargs).embed(texts, **call_kwargs)


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    engine = {k: kwargs.pop(k) for k in _ENGINE_ARGS if k in kwargs}
    device = resolve_device(engine.get("device"))
    engine["device"] = device
    engine["dtype"] = resolve_dtype(engine.get("dtype"), device)  # "bf16" and torch.bfloat16 share one engine
    engine.setdefault("max_length", None)  # the model's default: min(8192, its max_position_embeddings)
    engine.setdefault("max_batch_tokens", DEFAULT_MAX_BATCH_TOKENS)
    return engine, kwargs


@lru_cache(maxsize=4)
def _engine(cls: type[Reranker] | type[Embedder], model: str, **engine_kwargs: Any) -> Reranker | Embedder:
    return cls(model, **engine_kwargs)
