"""Strict, chunked reading of .safetensors files straight into preallocated tensors.

Why not `safetensors.safe_open`: `get_tensor` materialises a whole tensor in the file's dtype before
any conversion (a 600 MB fp32 embedding on the way to a 300 MB bf16 one), and its memory map makes
every page it reads count as resident memory of the process. Reading row blocks with plain file I/O
into one reusable buffer keeps peak host memory at the converted weights plus that buffer.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qrerank.files import open_regular, parse_json

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
_CHUNK_BYTES = 32 << 20
_MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class TensorEntry:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the tensor's data in the file

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse one file's header, checking every entry's dtype and byte range against the file and the others."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"{path}: not a safetensors file (header length {header_len} is impossible)")
        header = parse_json(f.read(header_len), f"{path}: corrupt safetensors header")
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    data_start = 8 + header_len
    entries = {
        name: _entry(path, name, meta, data_start, size) for name, meta in header.items() if name != "__metadata__"
    }
    # Two tensors sharing bytes would each read the other's data: only disjoint ranges are valid.
    ordered = sorted(entries.items(), key=lambda item: (item[1].offset, item[1].nbytes))
    for (first, a), (second, b) in itertools.pairwise(ordered):
        if b.offset < a.offset + a.nbytes:
            raise ValueError(f"{path}: tensors {first!r} and {second!r} have overlapping byte ranges")
    return entries


def _entry(path: Path, name: str, meta: Any, data_start: int, size: int) -> TensorEntry:
    """One header entry, refusing anything that would read outside the tensor's own bytes."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: tensor {name!r} has a corrupt header entry {meta!r:.80}")
    dtype = _DTYPES.get(meta["dtype"]) if isinstance(meta.get("dtype"), str) else None
    if dtype is None:
        raise ValueError(
            f"{path}: tensor {name!r} has dtype {meta.get('dtype')!r:.40}; expected one of {list(_DTYPES)}"
        )
    shape, offsets = meta.get("shape"), meta.get("data_offsets")
    if not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
        raise ValueError(f"{path}: tensor {name!r} has a corrupt shape {shape!r:.80} or data_offsets {offsets!r:.80}")
    begin, end = offsets
    if begin < 0 or end - begin != math.prod(shape) * dtype.itemsize or data_start + end > size:
        raise ValueError(
            f"{path}: tensor {name!r} has a byte range {offsets!r:.80} that does not fit its shape {shape!r:.80}"
        )
    return TensorEntry(path, dtype, tuple(shape), data_start + begin)


def _ints(values: Any) -> bool:
    """A list of non-negative ints (bool excluded)."""
    return isinstance(values, list) and all(type(v) is int and v >= 0 for v in values)


def copy_rows(entry: TensorEntry, dest: torch.Tensor, start: int = 0, stop: int | None = None) -> None:
    """Copy rows [start, stop) of a stored tensor into `dest` (any dtype/device), one block at a time."""
    stop = entry.shape[0] if stop is None else stop
    assert dest.shape == (stop - start, *entry.shape[1:]), (dest.shape, entry.shape, start, stop)
    row_bytes = max(entry.row_bytes, 1)
    rows_per_chunk = max(1, _CHUNK_BYTES // row_bytes)
    buffer = bytearray(min(stop - start, rows_per_chunk) * row_bytes)
    with open(entry.path, "rb", buffering=0) as f:
        for row in range(start, stop, rows_per_chunk):
            n = min(rows_per_chunk, stop - row)
            view = memoryview(buffer)[: n * row_bytes]
            f.seek(entry.offset + row * row_bytes)
            if f.readinto(view) != len(view):
                raise ValueError(f"{entry.path}: truncated data while reading a tensor")
            # safetensors stores little-endian; torch.frombuffer reads native order (little on x86/ARM).
            chunk = torch.frombuffer(view, dtype=entry.dtype).view(n, *entry.shape[1:])
            dest[row - start : row - start + n].copy_(chunk)


def read_tensor(entry: TensorEntry, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(entry.shape, dtype=dtype, device=device)
    copy_rows(entry, out)
    return out
