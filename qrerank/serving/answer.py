"""JSON answers encoded on a worker thread: a 1,024 x 1,024 embedding answer is about 20 MB of JSON,
over a second of encoding that would otherwise hold the event loop (and every other request) still."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import numpy as np
from starlette.responses import Response


def _plain(value: Any) -> Any:
    """numpy results as JSON values: arrays as nested lists (float32 written as its shortest float64 form)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


async def json_answer(payload: Any, status_code: int = 200) -> Response:
    body = await asyncio.to_thread(msgspec.json.encode, payload, enc_hook=_plain)
    return Response(body, status_code=status_code, media_type="application/json")
