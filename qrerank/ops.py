"""The one place the model's fused ops are chosen.

The model calls `ops.rms_norm(...)` etc. on an `Ops` bundle picked once per engine: the Triton
kernels of `qrerank.kernels` (the default on CUDA), the fused CPU ops of cpu_ops.py (the default on
CPU), or the torch twins in reference.py (`backend="torch"` anywhere). Every op has the signature of
its twin; the CPU ops return views of their engine's Workspace, valid until the op runs again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qrerank import reference


@dataclass(frozen=True)
class Ops:
    name: str
    rms_norm: Callable[..., torch.Tensor]
    add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    qk_norm_rope: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    attention: Callable[..., torch.Tensor]
    silu_mul: Callable[..., torch.Tensor]
    linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # x [N, in], weight [out, in] -> [N, out]


TORCH_OPS = Ops(
    name="torch",
    rms_norm=reference.rms_norm,
    add_rms_norm=reference.add_rms_norm,
    qk_norm_rope=reference.qk_norm_rope,
    attention=reference.attention,
    silu_mul=reference.silu_mul,
    linear=F.linear,
)


def triton_ops() -> Ops:
    """The Triton kernels; imported on first use so that CPU-only installs never load Triton."""
    from qrerank.kernels import attention, qk_norm_rope, rms_norm, silu_mul

    return Ops(
        name="triton",
        rms_norm=rms_norm.rms_norm,
        add_rms_norm=rms_norm.add_rms_norm,
        qk_norm_rope=qk_norm_rope.qk_norm_rope,
        attention=attention.attention,
        silu_mul=silu_mul.silu_mul,
        linear=F.linear,
    )


def ops_for(backend: str) -> Ops:
    """The op bundle of a shared backend ("torch" or "triton"); the CPU ops are per engine (cpu_ops.FusedCpuOps)."""
    return triton_ops() if backend == "triton" else TORCH_OPS
