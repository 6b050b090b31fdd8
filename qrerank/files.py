"""Strict reading of the files a checkpoint or an index consists of: regular files only, sizes bounded.

A checkpoint directory is input like any other: a FIFO where config.json should be would block a
plain `open()` forever, a directory fails late with an OSError, and `json.loads` lets a deeply
nested or huge-integer document escape as RecursionError or a ValueError that names no file.
Here each of those becomes a ValueError naming the file, before anything is parsed.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

MAX_JSON_BYTES = 64 << 20  # config.json, the shard index, sentence-transformers files: kilobytes in practice
MAX_TOKENIZER_BYTES = 256 << 20  # tokenizer.json: 11 MB for Qwen3


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for binary reading, refusing anything but a regular file (FileNotFoundError if absent).

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; it changes nothing
    for a regular file, and the file's type is checked on the opened descriptor, not on the name.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ValueError(f"{path} is {kind}; expected a regular file")
    return os.fdopen(fd, "rb")


def read_bytes(path: Path, limit: int) -> bytes:
    """The whole content of the regular file `path`, refused if it is larger than `limit` bytes."""
    with open_regular(path) as f:
        # st_size first, so that a huge file is refused unread; read(limit + 1) in case it grows meanwhile
        data = f.read(limit + 1) if os.fstat(f.fileno()).st_size <= limit else None
    if data is None or len(data) > limit:
        raise ValueError(f"{path} is larger than {limit >> 20} MiB; it cannot be a checkpoint's {path.name}")
    return data


def parse_json(data: bytes | str, source: object) -> Any:
    """`json.loads`, with every way a hostile document fails (syntax, encoding, nesting depth, integers
    past Python's digit limit) reported as a ValueError naming `source`."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ValueError(f"{source}: not valid JSON ({reason})") from None


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file, read strictly (see `open_regular`, `read_bytes`, `parse_json`)."""
    return parse_json(read_bytes(path, limit), path)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value
