"""Ahead-of-time compilation of every kernel configuration, for GPUs that need not be present.

Each kernel module lists the configurations its launcher can pick (`aot_configs()`); compiling
them for sm_90 and sm_80 in CI catches compile errors, register spills and a missing tensor-core path
without a GPU.

    python -m qrerank.kernels.aot [--kernel rms_norm ...] [--arch 90 80] [--jobs N] [--json PATH]

prints one row per (configuration, arch): registers, spill bytes, shared memory, wgmma. A spec whose
name ends in ",sm90]" (or another arch) is what only that arch's launcher picks, and is compiled for
that arch alone. Exit status 1 when a configuration does not compile. It must run without
TRITON_INTERPRET=1, which replaces @triton.jit functions by the interpreter at import time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch

KERNEL_MODULES = ("attention", "rms_norm", "qk_norm_rope", "silu_mul")
ARCHS = (90, 80)
_POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


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


@dataclass(frozen=True)
class AotResult:
    """What ptxas and Triton report for one spec compiled for one GPU architecture."""

    module: str  # the kernel module, e.g. "rms_norm"
    name: str  # AotSpec.name
    arch: int  # compute capability * 10 + minor, e.g. 90
    registers: int  # per thread
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    shared_bytes: int  # shared memory per program (Triton's metadata.shared)
    wgmma: bool  # the PTX issues Hopper warpgroup MMAs
    seconds: float  # compile wall time (a Triton cache hit is fast)
    error: str = ""  # the compile or ptxas failure; empty when it compiled


def pointer_type(dtype: torch.dtype) -> str:
    """The signature type of a pointer to `dtype` elements, as Triton's JIT names it ("*bf16", ...)."""
    return _POINTER_TYPES[dtype]


def all_specs(modules: tuple[str, ...] = KERNEL_MODULES) -> list[tuple[str, AotSpec]]:
    """(module name, spec) for every configuration of the named kernel modules, in a fixed order."""
    specs = []
    for module in modules:
        for spec in importlib.import_module(f"qrerank.kernels.{module}").aot_configs():
            specs.append((module, spec))
    return specs


def target_archs(spec: AotSpec, archs: tuple[int, ...] = ARCHS) -> tuple[int, ...]:
    """The archs of `archs` that `spec` is compiled for: all of them, unless its name ends in a tag such as
    ",sm90]" (a configuration only that arch's launcher picks, e.g. tiles sized for its register file).
    """
    tag = re.search(r",sm(\d+)\]$", spec.name)
    return tuple(a for a in archs if tag is None or a == int(tag.group(1)))


def compile_spec(spec: AotSpec, arch: int) -> tuple[dict[str, Any], str]:
    """Compile `spec` for compute capability `arch` (e.g. 90); returns (Triton's metadata, PTX).

    Pointers and specialisable integers are compiled as multiples of 16 (tt.divisibility), the variant
    Triton's JIT picks at run time for 16-byte aligned torch tensors and the Qwen3 shapes (all widths and
    strides are multiples of 16); parameters the kernel marks do_not_specialize are left generic.
    """
    import triton  # after the caller decided TRITON_INTERPRET; see the module docstring

    params = spec.kernel.params
    if list(spec.signature) != [p.name for p in params]:
        raise ValueError(f"{spec.name}: signature {list(spec.signature)} != kernel parameters {spec.kernel.arg_names}")
    attrs = {
        (p.num,): [["tt.divisibility", 16]]
        for p in params
        if spec.signature[p.name].startswith("*")
        or (spec.signature[p.name][0] in "iu" and not p.do_not_specialize and not p.do_not_specialize_on_alignment)
    }
    # Triton 3.6-3.9 take constexprs keyed by parameter name (converted to (index,) paths internally).
    source = triton.compiler.ASTSource(
        fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs
    )
    target = triton.backends.compiler.GPUTarget("cuda", arch, 32)
    compiled = triton.compile(
        source, target=target, options={"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    )
    return compiled.metadata._asdict(), compiled.asm["ptx"]


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from `ptxas -v` on the PTX."""
    from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton used: PTX ISA versions follow it

    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"  # Triton targets sm_90a (wgmma) on Hopper
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(tmp, "kernel.cubin")]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    return parse_ptxas_log(log)


def parse_ptxas_log(log: str) -> tuple[int, int, int]:
    """Registers and spill bytes of the single entry function in a `ptxas -v` log."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if registers is None or spills is None:
        raise ValueError(f"no register/spill report in the ptxas log:\n{log}")
    return int(registers.group(1)), int(spills.group(1)), int(spills.group(2))


def compile_one(modules: tuple[str, ...], index: int, arch: int) -> AotResult:
    """Compile all_specs(modules)[index] for `arch`; a failure is recorded in the result, not raised."""
    module, spec = all_specs(modules)[index]  # rebuilt in the worker: JIT functions do not pickle
    start = time.perf_counter()
    try:
        metadata, ptx = compile_spec(spec, arch)
        registers, spill_stores, spill_loads = ptxas_usage(ptx, arch)
    except Exception as exc:  # reported per configuration so that one failure does not hide the others
        return AotResult(module, spec.name, arch, 0, 0, 0, 0, False, time.perf_counter() - start, f"{exc!r:.2000}")
    return AotResult(
        module=module,
        name=spec.name,
        arch=arch,
        registers=registers,
        spill_stores=spill_stores,
        spill_loads=spill_loads,
        shared_bytes=int(metadata["shared"]),
        wgmma=re.search(r"\bwgmma\.", ptx) is not None,
        seconds=time.perf_counter() - start,
    )


def compile_all(
    modules: tuple[str, ...] = KERNEL_MODULES, archs: tuple[int, ...] = ARCHS, jobs: int | None = None
) -> list[AotResult]:
    """Every spec of the kernel modules for every arch, compiled in `jobs` processes (default: CPU count)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 is set: the kernels are interpreted and cannot be compiled")
    tasks = [
        (modules, index, arch)
        for index, (_, spec) in enumerate(all_specs(modules))
        for arch in target_archs(spec, archs)
    ]
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count()) as pool:
        return list(pool.map(compile_one, *zip(*tasks)))


def format_table(results: list[AotResult]) -> str:
    header = (
        f"{'kernel':<13} {'config':<44} {'arch':>5} {'regs':>5} {'spill st/ld':>12} {'smem':>7} {'wgmma':>6} {'s':>5}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.error:
            lines.append(f"{r.module:<13} {r.name:<44} {'sm_' + str(r.arch):>5} FAILED: {r.error}")
            continue
        spills = f"{r.spill_stores}/{r.spill_loads}"
        lines.append(
            f"{r.module:<13} {r.name:<44} {'sm_' + str(r.arch):>5} {r.registers:>5} {spills:>12} "
            f"{r.shared_bytes:>7} {'yes' if r.wgmma else 'no':>6} {r.seconds:>5.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrerank.kernels.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", nargs="+", default=list(KERNEL_MODULES), choices=KERNEL_MODULES)
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities, e.g. 90 80")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile processes (default: CPU count)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = compile_all(tuple(args.kernel), tuple(args.arch), args.jobs)
    print(format_table(results))
    print(f"{len(results)} compiles in {time.perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
