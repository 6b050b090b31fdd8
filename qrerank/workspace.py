"""Per-engine activation buffers, reused from layer to layer and batch to batch, so a CPU forward maps no memory.

glibc serves every allocation above its mmap threshold (32 MiB at most) with fresh pages that are faulted in
on first touch and unmapped on free: a 16-document bf16 batch's gate_up output (2,878 x 6,144 = 35 MB) paid
that on every layer, and the GEMM writing it ran at a third of its rate into a warm buffer. Other allocators
trade this differently (tcmalloc helped, jemalloc hurt); writing into buffers that already exist does not
depend on any of them. On CUDA the caching allocator already does this, so only CPU ops use a Workspace.
"""

from __future__ import annotations

import math

import torch


class Workspace:
    """Named flat buffers of one dtype on one device, each as large as the largest request made of it.

    `take(name, shape)` returns the first prod(shape) elements of buffer `name` viewed as `shape`, and
    overwrites whatever the previous `take(name, ...)` returned: a name stands for one value whose
    lifetime ends before the next value of that name is made. Buffers grow (a fresh, larger one) when a
    bigger batch arrives and are kept for the engine's life; `nbytes` says how much that is.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype = dtype
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=self.dtype, device=self.device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def __repr__(self) -> str:
        return f"Workspace({len(self._buffers)} buffers, {self.nbytes / 2**20:.1f} MiB, {self.dtype})"
