"""dtype "auto" on CPU: bf16 exactly where the CPU has native bf16 matrix instructions, fp32 elsewhere; and how an
engine reports what it chose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qrerank import Reranker, cpu_features
from qrerank.cpu_features import CpuFeatures
from qrerank.validation import resolve_backend, resolve_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AMX = CpuFeatures(amx_bf16=True, avx512_bf16=True, threads=2)
ZEN4 = CpuFeatures(amx_bf16=False, avx512_bf16=True, threads=16)
EMULATED = CpuFeatures(amx_bf16=False, avx512_bf16=False, threads=2)  # e.g. AVX2 or AVX512F only


@pytest.mark.parametrize(
    ("features", "expected"), [(AMX, torch.bfloat16), (ZEN4, torch.bfloat16), (EMULATED, torch.float32)]
)
@pytest.mark.parametrize("requested", [None, "auto"])
def test_auto_is_bf16_only_with_native_bf16(
    features: CpuFeatures, expected: torch.dtype, requested: str | None
) -> None:
    assert resolve_dtype(requested, CPU, features) == expected
    assert resolve_dtype(requested, CUDA) == torch.bfloat16
    assert resolve_dtype("float32", CPU, features) == torch.float32  # an explicit dtype is never overridden


def test_features_describe_themselves() -> None:
    assert AMX.describe() == "AMX-BF16, AVX512-BF16, 2 threads" and AMX.native_bf16
    assert EMULATED.describe() == "no native bf16, 2 threads" and not EMULATED.native_bf16
    found = cpu_features.detect()
    assert found.threads == torch.get_num_threads()
    assert found.native_bf16 == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def test_the_engine_reports_its_choice(reranker_dir: Path) -> None:
    auto = Reranker(reranker_dir, device="cpu", max_length=64)
    native = cpu_features.detect().native_bf16
    assert auto.dtype == (torch.bfloat16 if native else torch.float32)
    text = repr(auto)
    assert text.startswith(f"Reranker({str(reranker_dir)!r}, device=cpu, dtype=")
    assert "(auto)" in text and "backend=cpu" in text and cpu_features.detect().describe() in text
    explicit = repr(Reranker(reranker_dir, device="cpu", dtype="float32", max_length=64, backend="torch"))
    assert "dtype=float32, backend=torch" in explicit and "(auto)" not in explicit and "ops=" not in explicit


def test_cpu_backend_is_validated() -> None:
    assert resolve_backend(None, CPU, torch.bfloat16) == "cpu"
    assert resolve_backend(None, CPU, torch.float64) == "torch"  # fp64: the twins, a debugging setting
    with pytest.raises(ValueError, match=r"backend='cpu' runs on device 'cpu' only, got device 'cuda'"):
        resolve_backend("cpu", CUDA, torch.bfloat16)
