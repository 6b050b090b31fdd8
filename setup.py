"""Build script. Metadata lives in pyproject.toml; this file adds the optional CUDA extension `qrerank._topk`.

The extension (csrc/: the fused similarity top-k kernel and its pybind11 binding, no torch headers) is
compiled by nvcc for sm_80 and sm_90a, plus compute_80 PTX that newer GPUs can JIT-compile, whenever a CUDA
toolkit is found: `$CUDA_HOME/bin/nvcc`, else `nvcc` on PATH. Whether this machine has a GPU plays no part.
`QRERANK_SKIP_CUDA_BUILD=1` skips it; without a toolkit the install is pure Python and `qrerank.topk` uses
its torch path. A toolkit that is present but fails to compile the extension fails the install loudly.

The build takes about 15 s per architecture-pair on two CPU cores. Tests import this file for
`nvcc_command` (tests/test_topk_build.py), so the build flags live in one place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
SOURCES = ["csrc/topk.cu", "csrc/bindings.cpp"]
HEADERS = ["csrc/topk.h", "csrc/platform.cuh", "csrc/keys.cuh", "csrc/select.cuh", "csrc/scan.cuh"]
GENCODE = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_80,code=compute_80",
]
SKIP_VARIABLE = "QRERANK_SKIP_CUDA_BUILD"


def find_nvcc() -> str | None:
    """nvcc of $CUDA_HOME (or $CUDA_PATH) if it has one, else the first on PATH, else None."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(variable)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def nvcc_command(nvcc: str, output: str | os.PathLike[str], *, ptxas_verbose: bool = False) -> list[str]:
    """The one nvcc call that compiles and links the extension module to `output` (run from ROOT)."""
    import pybind11  # a build requirement (pyproject.toml), so importable whenever this runs

    includes = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}", f"-I{ROOT / 'csrc'}"]
    command = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden", *GENCODE, *includes]
    if ptxas_verbose:
        command += ["-Xptxas", "-v"]  # registers and spills of every kernel, on stderr
    return [*command, *(str(ROOT / s) for s in SOURCES), "-o", str(output)]


class BuildExtension(build_ext):
    """build_ext that hands `qrerank._topk` to nvcc (setuptools has no notion of .cu files)."""

    def build_extension(self, ext: Extension) -> None:
        nvcc = find_nvcc()
        if nvcc is None:  # found when the extension was declared, gone now
            raise RuntimeError(f"nvcc disappeared while building {ext.name}")
        output = Path(self.get_ext_fullpath(ext.name))
        output.parent.mkdir(parents=True, exist_ok=True)
        command = nvcc_command(nvcc, output)
        print(" ".join(command), flush=True)
        result = subprocess.run(command, cwd=ROOT, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"nvcc failed to build {ext.name} (exit status {result.returncode}); "
                f"set {SKIP_VARIABLE}=1 to install without the CUDA top-k kernel"
            )


def extensions() -> list[Extension]:
    if os.environ.get(SKIP_VARIABLE) == "1":
        print(f"{SKIP_VARIABLE}=1: not building qrerank._topk", file=sys.stderr)
        return []
    if find_nvcc() is None:
        print("no CUDA toolkit (CUDA_HOME or nvcc on PATH): not building qrerank._topk", file=sys.stderr)
        return []
    return [Extension("qrerank._topk", sources=SOURCES, depends=HEADERS)]


if __name__ == "__main__":
    setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension})
