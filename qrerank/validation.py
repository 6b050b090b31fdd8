"""Argument checks for the public API: each raises TypeError/ValueError naming the argument and position."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import torch

from qrerank import cpu_features
from qrerank.cpu_features import CpuFeatures

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}
_FLOAT_DTYPES = frozenset(_DTYPE_NAMES.values())


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_str(value: Any, name: str) -> str:
    """A str that is Unicode text: a lone surrogate (which no tokenizer or UTF-8 encoder takes) is refused."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {_type_name(value)}")
    surrogate = _SURROGATE.search(value)
    if surrogate is not None:
        raise ValueError(
            f"{name} is not valid Unicode text: it holds the lone surrogate U+{ord(surrogate[0]):04X} at "
            f"character {surrogate.start()}"
        )
    return value


def check_optional_str(value: Any, name: str) -> str | None:
    return None if value is None else check_str(value, name)


def check_str_list(values: Any, name: str) -> list[str]:
    """A list/tuple/sequence of str; a bare string is refused (it would silently become its characters)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a list of str, got a bare {_type_name(values)}; wrap it in a list")
    if not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of str, got {_type_name(values)}")
    for i, value in enumerate(values):
        check_str(value, f"{name}[{i}]")
    return list(values)


def check_pairs(pairs: Any, name: str = "pairs") -> list[tuple[str, str]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"{name} must be a list of (query, document) tuples, got {_type_name(pairs)}")
    checked = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"{name}[{i}] must be a (query, document) pair of str, got {pair!r:.80}")
        checked.append((check_str(pair[0], f"{name}[{i}][0]"), check_str(pair[1], f"{name}[{i}][1]")))
    return checked


def check_int(value: Any, name: str, minimum: int | None, maximum: int | None = None) -> int:
    """An int (not a bool) in [minimum, maximum]; a None bound is open."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {_type_name(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            bound = f"between {minimum} and {maximum}"
        else:
            bound = f">= {minimum}" if minimum is not None else f"<= {maximum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {_type_name(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_type_name(value)}")
    return value


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when available, else CPU. Only 'cpu' and 'cuda[:N]' are supported."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {_type_name(device)}")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; qrerank runs on 'cpu' and 'cuda'")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, cpu: CpuFeatures | None = None) -> torch.dtype:
    """None or "auto" -> bf16 on CUDA and on CPUs with native bf16 matmuls (`cpu`, detected when not given),
    fp32 on other CPUs (where bf16 is emulated, and slower); otherwise any torch float dtype or its name."""
    if dtype is None or dtype == "auto":
        native = device.type == "cuda" or (cpu or cpu_features.detect()).native_bf16
        return torch.bfloat16 if native else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype {dtype!r} is not a float dtype name; use 'auto' or one of {sorted(_DTYPE_NAMES)}")
        return _DTYPE_NAMES[dtype]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or str, got {_type_name(dtype)}")
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported; use torch.float32, bfloat16, float16 or float64")
    return dtype


BACKENDS = ("cpu", "torch", "triton")


def resolve_backend(backend: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """None -> "triton" on CUDA, "cpu" (the fused CPU ops) on CPU, "torch" in fp64 (which neither takes).

    "triton" on CPU runs the kernels in Triton's interpreter, a debugging aid.
    """
    if backend is None:
        if dtype == torch.float64:
            return "torch"
        return "triton" if device.type == "cuda" else "cpu"
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {_type_name(backend)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' runs on device 'cpu' only, got device {str(device)!r}")
    if backend == "triton" and dtype == torch.float64:
        raise ValueError("backend='triton' does not support dtype torch.float64; use backend='torch'")
    if backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "backend='triton' on device 'cpu' runs the kernels in Triton's interpreter, a slow debugging aid: "
            "set TRITON_INTERPRET=1 before qrerank is imported, or use backend='torch'"
        )
    return backend
