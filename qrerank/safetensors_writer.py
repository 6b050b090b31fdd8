"""Atomic writing of a .safetensors file: a reader sees the old file or the complete new one, never a mix.

The tensors go to a temporary file in the target's directory (so the final rename cannot cross file
systems), which is flushed to disk and then renamed over the target with `os.replace`. Any exception
(a full disk, Ctrl-C) removes the temporary file. A process killed outright (SIGKILL, power loss)
cannot clean up: the old file is still intact, and the temporary it leaves is named
`.{target}.{random}.tmp` beside it, so it is recognisable and safe to delete. The file is created with
mode 0o666 filtered by the umask, like any new file (not the 0o600 of `tempfile.mkstemp`).
Written by hand rather than with `safetensors.torch.save_file`, whose temporary-file behaviour differs
between the versions qrerank allows.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch

_DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.uint8: "U8",
    torch.int64: "I64",
}


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def save_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str]) -> None:
    """Write CPU `tensors` and string `metadata` to the safetensors file `path`, replacing it atomically."""
    path = Path(path)
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes, so the data is aligned
    temporary = temporary_name(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for tensor in tensors.values():
                # Raw bytes without a copy: little-endian on every platform torch runs qrerank on.
                f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
