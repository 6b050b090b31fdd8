"""benchmarks/profile_cpu.py: the op groups cover a real request's profile and its shares add up."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def profile_cpu(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("profile_cpu")


def test_groups_name_the_forward_ops(profile_cpu: ModuleType) -> None:
    assert profile_cpu.group_of("aten::mm") == "linear layers (aten::mm)"
    assert profile_cpu.group_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention (SDPA)"
    assert profile_cpu.group_of("## Call CompiledFxGraph fzu3u4apfynon6 ##") == "compiled elementwise kernels"
    assert profile_cpu.group_of("aten::embedding") == "other"


@pytest.mark.parametrize("task", ["score", "embed"])
def test_a_tiny_request_is_profiled(profile_cpu: ModuleType, task: str) -> None:
    engine, wall, shares = profile_cpu.profile_request(task, "tiny", "float32", 3)
    assert "dtype=float32" in engine and wall > 0
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["linear layers (aten::mm)"] > 0 and shares["attention (SDPA)"] > 0
    if "Inductor-compiled" in engine:
        assert shares["compiled elementwise kernels"] > 0
