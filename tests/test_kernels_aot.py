"""Every configuration of every Triton kernel compiles for sm_90 and sm_80 without register spills; no GPU needed.

The compile runs once per session in a subprocess (`python -m qrerank.kernels.aot`) whose environment
lacks TRITON_INTERPRET: tests/conftest.py sets it without a GPU, and then @triton.jit functions are
interpreter stand-ins that cannot be compiled. Compiles land in Triton's cache, so only the first run
after a kernel changes pays for them (minutes on 2 cores for the attention kernel's configurations).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qrerank.kernels import aot

ARCHS = (90, 80)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    path = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "qrerank.kernels.aot", "--json", str(path), "--arch", *map(str, ARCHS)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert path.exists(), f"the AOT compile wrote no results (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(Path(path).read_text())


def test_every_config_of_every_kernel_is_compiled_for_both_archs(results: list[dict[str, Any]]) -> None:
    specs = aot.all_specs()
    assert {module for module, _ in specs} == set(aot.KERNEL_MODULES)
    names = [spec.name for _, spec in specs]
    assert len(set(names)) == len(names), "AotSpec names must be unique"
    expected = sorted((module, spec.name, arch) for module, spec in specs for arch in aot.target_archs(spec, ARCHS))
    for arch in ARCHS:  # each arch compiles a configuration of every kernel
        assert {module for module, _, a in expected if a == arch} == set(aot.KERNEL_MODULES)
    assert sorted((r["module"], r["name"], r["arch"]) for r in results) == expected


def test_every_config_compiles(results: list[dict[str, Any]]) -> None:
    failed = [f"{r['name']} sm_{r['arch']}: {r['error']}" for r in results if r["error"]]
    assert not failed, "\n".join(failed)


def test_no_register_spills(results: list[dict[str, Any]]) -> None:
    spilled = [
        f"{r['name']} sm_{r['arch']}: {r['registers']} registers, spill stores {r['spill_stores']} B, "
        f"loads {r['spill_loads']} B"
        for r in results
        if not r["error"] and (r["spill_stores"] or r["spill_loads"])
    ]
    assert not spilled, "\n".join(spilled)


def test_every_attention_dtype_is_compiled(results: list[dict[str, Any]]) -> None:
    names = [r["name"] for r in results if r["module"] == "attention"]
    for dtype in ("bf16", "fp16", "fp32"):
        assert any(f",{dtype}" in name for name in names), f"no {dtype} attention configuration compiled"


def test_attention_uses_wgmma_on_sm90(results: list[dict[str, Any]]) -> None:
    attention = [r for r in results if r["module"] == "attention" and r["arch"] == 90 and not r["error"]]
    assert attention, "no compiled sm_90 attention configuration"
    # fp32 at D = 128 runs 16-row mma.sync tiles by design: no wgmma tile of its tf32x3 dots fits the
    # registers (the tile table in kernels/attention.py); every other configuration must use wgmma.
    missing = [r["name"] for r in attention if not r["wgmma"] and not ("D=128" in r["name"] and "fp32" in r["name"])]
    assert not missing, (
        f"no wgmma in the sm_90 PTX of {missing}: Triton lowers tl.dot to Hopper warpgroup MMAs only when "
        "the operands are 16-bit (or fp8/tf32), num_warps is a multiple of 4 and the M tile gives each "
        "warpgroup at least 64 rows; otherwise it falls back to Ampere's mma.sync at about half the "
        "tensor-core rate (see the tile table in kernels/attention.py)"
    )


def test_arch_tagged_specs_compile_for_their_arch_only() -> None:
    spec = aot.all_specs(("silu_mul",))[0][1]
    assert aot.target_archs(spec, ARCHS) == ARCHS
    assert aot.target_archs(dataclasses.replace(spec, name="silu_mul[BLOCK=1024,bf16,sm80]"), ARCHS) == (80,)
    assert aot.target_archs(dataclasses.replace(spec, name="silu_mul[sm90,bf16]"), ARCHS) == ARCHS  # not a tag


def test_parse_ptxas_log_reads_registers_and_spills() -> None:
    log = (
        "ptxas info    : Compiling entry function '_k' for 'sm_80'\n"
        "ptxas info    : Function properties for _k\n"
        "    8 bytes stack frame, 24 bytes spill stores, 20 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 400 bytes cmem[0]\n"
    )
    assert aot.parse_ptxas_log(log) == (255, 24, 20)
    with pytest.raises(ValueError, match="no register/spill report"):
        aot.parse_ptxas_log("ptxas fatal   : Unresolved extern function 'f'\n")
