"""Shared fixtures: tiny random-weight Qwen3 checkpoints with the real Qwen3 tokenizer (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter (its documented debug
    # knob). It must be set before any kernel module is imported, because @triton.jit reads it then.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from qrerank import Embedder, Reranker
from qrerank.testing import random_checkpoint


@pytest.fixture(scope="session")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3ForCausalLM layout (`model.` prefix), tied head, reranker tokenizer."""
    return random_checkpoint(tmp_path_factory.mktemp("reranker"), "tiny", "reranker", seed=1)


@pytest.fixture(scope="session")
def embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3Model layout (no prefix, no head), tokenizer that appends <|endoftext|>."""
    return random_checkpoint(tmp_path_factory.mktemp("embedding"), "tiny", "embedding", seed=2)


@pytest.fixture(scope="session")
def reranker(reranker_dir: Path) -> Reranker:
    return Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=512)


@pytest.fixture(scope="session")
def embedder(embedding_dir: Path) -> Embedder:
    return Embedder(embedding_dir, device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=512)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
