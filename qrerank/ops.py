"""The one place the model's fused ops are chosen.

The model calls `ops.rms_norm(...)` etc. on an `Ops` bundle picked once per engine; the Triton
kernels of `qrerank.kernels` slot in here for CUDA tensors without any change to model.py. Every
entry has the signature of its twin in reference.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qrerank import reference


@dataclass(frozen=True)
class Ops:
    name: str
    rms_norm: Callable[..., torch.Tensor]
    add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    qk_norm_rope: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    attention: Callable[..., torch.Tensor]
    silu_mul: Callable[..., torch.Tensor]


TORCH_OPS = Ops(
    name="torch",
    rms_norm=reference.rms_norm,
    add_rms_norm=reference.add_rms_norm,
    qk_norm_rope=reference.qk_norm_rope,
    attention=reference.attention,
    silu_mul=reference.silu_mul,
)


def ops_for(device: torch.device) -> Ops:
    """The op bundle for a device. Only the torch references exist so far, on every device."""
    del device
    return TORCH_OPS
