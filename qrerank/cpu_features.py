"""What this CPU can do for the forward pass: native bf16 matrix instructions or not, and how many threads torch uses.

On a CPU with AMX-BF16 tiles or AVX512-BF16 dot products, bf16 matmuls run several times faster than fp32
(measured on a 2-core Xeon: ~2,400 vs ~320 GFLOP/s). Without them (e.g. AVX2-only or AVX512F-only CPUs)
oneDNN emulates bf16 by converting to fp32, and bf16 is slower than fp32 (6x on a 2-core AMD EPYC). Note
that `torch.ops.mkldnn._is_mkldnn_bf16_supported()` is true on the emulating CPUs too, so it cannot decide.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CpuFeatures:
    amx_bf16: bool  # Intel AMX tiles (Sapphire Rapids and later): bf16 matmuls on a tile unit
    avx512_bf16: bool  # AVX512-BF16 dot-product instructions (Cooper Lake, Zen 4 and later)
    threads: int  # torch's intra-op thread count

    @property
    def native_bf16(self) -> bool:
        """True when bf16 matmuls run on native instructions rather than through fp32 emulation."""
        return self.amx_bf16 or self.avx512_bf16

    def describe(self) -> str:
        """E.g. 'AMX-BF16, AVX512-BF16, 2 threads' or 'no native bf16, 16 threads'."""
        names = [name for name, present in (("AMX-BF16", self.amx_bf16), ("AVX512-BF16", self.avx512_bf16)) if present]
        return f"{', '.join(names) or 'no native bf16'}, {self.threads} threads"


def detect() -> CpuFeatures:
    """Ask torch's cpuinfo about this CPU (cheap; called once per engine, never cached globally)."""
    cpu = torch.cpu
    return CpuFeatures(
        amx_bf16=bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()),
        avx512_bf16=bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
        threads=torch.get_num_threads(),
    )


def model_name() -> str:
    """The CPU's model name as `lscpu` prints it (from /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()
