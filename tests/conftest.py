"""Shared fixtures: tiny random-weight Qwen3 checkpoints with the real Qwen3 tokenizer (built once per session),
and the benchmark scripts loaded as modules."""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter (its documented debug
    # knob). It must be set before any kernel module is imported, because @triton.jit reads it then.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from qrerank import Embedder, Reranker
from qrerank.testing import random_checkpoint


def _fix_triton_36_interpreter_for_numpy_24() -> None:
    """Triton 3.6's interpreter turns a scalar loop bound into a Python int with int() on its 1-element
    array, which numpy 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"), so
    every kernel with a data-dependent loop fails. Triton 3.9 squeezes the array first
    (triton-lang/triton#9171); this installs that same __index__ where the interpreter still has the old one.
    """
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or "squeeze" in inspect.getsource(patch_tensor):
        return  # a Triton without the bug

    def patch_with_squeeze(tensor: type, scope: object) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))  # type: ignore[attr-defined]

    interpreter._patch_lang_tensor = patch_with_squeeze


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_triton_36_interpreter_for_numpy_24()


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


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """Loads benchmarks/<name>.py as a module (the scripts are not a package)."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
