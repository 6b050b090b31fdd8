"""Ahead-of-time compilation of every kernel configuration, for GPUs that need not be present.

Each kernel module lists the configurations its launcher can pick (`aot_configs()`); compiling
them for sm_90 and sm_80 in CI catches compile errors, register spills and a missing tensor-core path
without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AotSpec:
    """One launchable configuration of a Triton kernel."""

    name: str  # e.g. "attention[D=128,group=2,fp16]"
    kernel: Any  # the @triton.jit function
    signature: dict[
        str, str
    ]  # every parameter, in order: "*fp16", "*bf16", "*fp32", "*i32", "i32", "fp32" or "constexpr"
    constexprs: dict[str, int | float | bool]  # values of the "constexpr" parameters
    num_warps: int
    num_stages: int
