"""The CUDA top-k extension without a GPU: it compiles with this machine's nvcc for sm_80 and sm_90a with
no register spills and imports, and without a GPU it raises a clear error. Then the same sources built
against the CPU emulator (csrc/dev/emulate.h) run the kernels through the real binding, compared with
qrerank.topk's torch path. Skipped where no CUDA toolkit is installed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest
import torch

from qrerank.similarity import aligned_width, topk

ROOT = Path(__file__).resolve().parents[1]


def load_setup() -> ModuleType:
    """setup.py as a module (its setup() call runs only as __main__), for the build flags it owns."""
    spec = importlib.util.spec_from_file_location("qrerank_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SETUP = load_setup()
NVCC = SETUP.find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="no CUDA toolkit (CUDA_HOME or nvcc on PATH)")


def load_extension(path: Path, package: str) -> ModuleType:
    # A distinct package per build: CPython caches an extension module by its full name.
    spec = importlib.util.spec_from_file_location(f"{package}._topk", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_include() -> Path:
    """The toolkit's include directory (nvcc may be a wrapper script outside it)."""
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += [Path(NVCC).resolve().parents[1] / "include", Path("/usr/local/cuda/include")]
    for path in candidates:
        if (path / "cuda_bf16.h").is_file():
            return path
    pytest.skip("CUDA headers not found next to nvcc or in /usr/local/cuda")


@pytest.fixture(scope="module")
def nvcc_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("nvcc") / ("_topk" + sysconfig.get_config_var("EXT_SUFFIX"))
    result = subprocess.run(
        SETUP.nvcc_command(NVCC, output, ptxas_verbose=True), cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return output, result.stdout + result.stderr


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    import pybind11

    output = tmp_path_factory.mktemp("emulated") / ("_topk" + sysconfig.get_config_var("EXT_SUFFIX"))
    command = [
        os.environ.get("CXX", "g++"),
        *("-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-DQRERANK_EMULATE"),
        f"-I{cuda_include()}",
        f"-I{pybind11.get_include()}",
        f"-I{sysconfig.get_paths()['include']}",
        *("-x", "c++", "csrc/topk.cu", "csrc/bindings.cpp", "-o", str(output)),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return load_extension(output, "emulated")


def test_compiles_for_sm80_and_sm90a_without_spills(nvcc_build: tuple[Path, str]) -> None:
    _, log = nvcc_build
    kernels = re.findall(r"Compiling entry function '(\w+)' for '(sm_\w+)'", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert {arch for _, arch in kernels} == {"sm_80", "sm_90a"}
    assert len(kernels) == 14, kernels  # 6 scan variants (3 dtypes x 2 query tiles) + merge, per arch
    assert len(spills) == len(kernels)
    assert all(stores == "0" and loads == "0" for stores, loads in spills), log


def test_imports_and_reports_a_missing_gpu(nvcc_build: tuple[Path, str]) -> None:
    module = load_extension(nvcc_build[0], "nvcc_built")
    assert module.MAX_K == 1024 and module.ALIGNMENT == 16 and module.EMULATED is False
    with pytest.raises(ValueError, match="dtype must be 'float32', 'bfloat16' or 'float16', got 'int8'"):
        module.workspace_bytes(1, 10, 8, 3, "int8")
    if torch.cuda.is_available():
        assert module.workspace_bytes(1, 10, 8, 3, "bfloat16") > 0
    else:
        with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
            module.workspace_bytes(1, 10, 8, 3, "bfloat16")


def run_emulated(module: ModuleType, queries: torch.Tensor, corpus: torch.Tensor, k: int) -> tuple:
    """The kernels through the binding, on CPU tensors (host memory stands in for device memory)."""
    (m, d), n = queries.shape, corpus.shape[0]
    dtype = str(queries.dtype).removeprefix("torch.")
    scores, indices = torch.empty(m, k), torch.empty(m, k, dtype=torch.int64)
    workspace = torch.full((module.workspace_bytes(m, n, d, k, dtype),), 0xCD, dtype=torch.uint8)  # not cleared
    module.topk(
        queries.data_ptr(), queries.stride(0), corpus.data_ptr(), corpus.stride(0), m, n, d, k, dtype,
        scores.data_ptr(), indices.data_ptr(), workspace.data_ptr(), workspace.numel(), 0,
    )  # fmt: skip
    return scores, indices


def padded(x: torch.Tensor) -> torch.Tensor:
    """Rows on 16-byte boundaries, as qrerank.topk lays them out; the padding is NaN, which must not be read."""
    out = torch.full((x.shape[0], aligned_width(x.shape[1], x.dtype)), float("nan"), dtype=x.dtype)
    out[:, : x.shape[1]] = x
    return out[:, : x.shape[1]]


@pytest.mark.parametrize(
    ("m", "n", "d", "k", "dtype"),
    [
        (3, 700, 40, 10, torch.bfloat16),  # 2 query rows short of a tile, several corpus ranges
        (20, 1500, 21, 100, torch.float16),  # 64-query tiles, odd d, buffers cut back mid-scan
        (5, 300, 17, 300, torch.float32),  # k = n, fp32 FMA path
    ],
)
def test_emulated_kernel_matches_torch_path(
    emulated: ModuleType, m: int, n: int, d: int, k: int, dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(m + n)
    queries = padded(torch.randint(-2, 3, (m, d), generator=generator).to(dtype))
    corpus = padded(torch.randint(-2, 3, (n, d), generator=generator).to(dtype))
    assert emulated.EMULATED is True
    scores, indices = run_emulated(emulated, queries, corpus, k)
    expected = topk(queries.contiguous(), corpus.contiguous(), k, backend="torch")
    assert torch.equal(indices, expected[1])  # integer data: exact, ties by row
    assert torch.equal(scores, expected[0])


def test_emulated_binding_rejects_bad_arguments(emulated: ModuleType) -> None:
    queries, corpus = torch.ones(2, 8), torch.ones(9, 8)
    with pytest.raises(ValueError, match=r"k must be between 1 and min\(1024, n\) = 9, got 10"):
        emulated.workspace_bytes(2, 9, 8, 10, "float32")
    with pytest.raises(ValueError, match="row stride must be a multiple of 16 bytes"):
        emulated.topk(queries.data_ptr(), 5, corpus.data_ptr(), 8, 2, 9, 5, 3, "float32", 1 << 4, 1 << 4, 1 << 4, 8, 0)
    with pytest.raises(ValueError, match="workspace must hold"):
        emulated.topk(queries.data_ptr(), 8, corpus.data_ptr(), 8, 2, 9, 8, 3, "float32", 1 << 4, 1 << 4, 1 << 4, 8, 0)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
