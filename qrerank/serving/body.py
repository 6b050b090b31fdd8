"""Request bodies: read under a size limit, then decode and validate against a schema off the event loop.

Done by hand rather than by FastAPI's body parameters so that each failure gets its own status:
not declared `application/json` 415 (so a web page cannot post a CORS-free "simple" text/plain
request), oversized 413 (checked on Content-Length before reading, and again while streaming), not
UTF-8 or not JSON 400, the wrong shape 422 naming the first offending field, a list longer than any
route takes 413. Decoding runs on a worker thread, so a large body never holds the event loop (and
with it /health and every other request), and it stops at the first error. A list longer than the
server's bound is refused by counting before anything is built (list_bound.py), as soon as the part of
the body received shows it: a 4 MiB flood of items is refused from its first chunk, and uvicorn drops
the rest of it as it arrives, unparsed. A client that disconnects mid-body is ClientDisconnected, not
a server fault.
"""

from __future__ import annotations

import asyncio
import re
from typing import TypeVar

import msgspec
from fastapi import Request
from starlette.requests import ClientDisconnect

from qrerank.serving.errors import ApiError, ClientDisconnected
from qrerank.serving.list_bound import ListBound
from qrerank.serving.schemas import Schema

S = TypeVar("S", bound=Schema)

_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")
_LAST_KEY = re.compile(rb'"([^"\\]{1,64})"\s*:\s*[^:]*$')


def check_json_content_type(request: Request) -> None:
    """415 unless the body is declared JSON: `application/json`, with at most a UTF-8 charset parameter."""
    declared = request.headers.get("content-type", "")
    media_type, *parameters = (part.strip() for part in declared.split(";"))
    pairs = (parameter.partition("=") for parameter in parameters)
    charsets = [value.strip().strip('"').lower() for name, _, value in pairs if name.strip().lower() == "charset"]
    if media_type.lower() != "application/json" or any(charset not in ("utf-8", "utf8") for charset in charsets):
        shown = f"{declared!r}" if declared else "none"
        raise ApiError(415, f"request bodies must be UTF-8 JSON sent as 'Content-Type: application/json'; got {shown}")


async def read_body(request: Request, max_bytes: int, bound: ListBound | None = None) -> bytes:
    """The body of `request`, declared JSON and within `max_bytes`; ApiError 413/415 otherwise. With a
    `bound`, a list over it is refused (413) as soon as the part received shows it, the rest unread."""
    check_json_content_type(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = commas = 0
    watch = bound if bound is not None and bound.fields else None  # None once the received part is walked
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:  # a chunked body, or a Content-Length that lied
                raise ApiError(413, f"request body exceeds the limit of {max_bytes} bytes")
            chunks.append(chunk)
            if watch is not None:
                commas += chunk.count(b",")
                if commas >= watch.max_items:  # from now on a list may be over: one walk of what has come
                    await asyncio.to_thread(watch.check_prefix, b"".join(chunks))
                    watch = None
    except ClientDisconnect:
        raise ClientDisconnected("body") from None
    return b"".join(chunks)


async def read_request(request: Request, schema: type[S], max_bytes: int, max_items: int | None = None) -> S:
    """The body of `request` decoded into `schema` (`decode`); ApiError 400/413/415/422 otherwise."""
    bound = ListBound.of(schema, max_items) if max_items is not None else None
    raw = await read_body(request, max_bytes, bound)
    return await asyncio.to_thread(decode, schema, raw, max_items)


def decode(schema: type[S], raw: bytes, max_items: int | None = None) -> S:
    """`raw` decoded into `schema`, its top-level lists at most `max_items` long; ApiError 400/413/422 otherwise."""
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object")
    if max_items is not None:
        ListBound.of(schema, max_items).check(raw)
    try:
        return msgspec.json.decode(raw, type=schema)
    except msgspec.ValidationError as err:
        raise ApiError(422, f"invalid {schema.__name__}: {_field_message(str(err))}") from None
    except msgspec.DecodeError as err:
        raise ApiError(400, f"the request body is not valid JSON: {_decode_message(str(err), raw)}") from None
    except RecursionError:  # an ignored field of nothing but nested brackets
        raise ApiError(400, "the request body nests JSON too deeply") from None


def _field_message(message: str) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.documents[0]`" as "documents[0]: expected `int`, got `str`"."""
    text, _, path = message.partition(" - at `$")
    field = path.rstrip("`").lstrip(".")
    missing = re.fullmatch(r"Object missing required field `(.+)`", text)
    if missing:
        field, text = f"{field}.{missing[1]}".lstrip("."), "field required"
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", text)
    if unknown:
        field, text = f"{field}.{unknown[1]}".lstrip("."), "unknown field (this API does not take it)"
    text = text[:1].lower() + text[1:]
    return f"{field}: {text}" if field else f"body: {text}"


def _decode_message(message: str, raw: bytes) -> str:
    """msgspec's message, plus the field being read where the error offset shows one (a lone surrogate in a
    string, say, is reported at its byte)."""
    message = message.removeprefix("JSON is malformed: ")
    if message == "Invalid UTF-8 encoded string":
        return "it is not valid UTF-8"
    offset = _BYTE_OFFSET.search(message)
    if offset:
        window = raw[max(0, int(offset[1]) - 4096) : int(offset[1])]
        key = _LAST_KEY.search(window)
        if key:
            message += f", in the value of {key[1].decode('utf-8', 'replace')!r}"
    return message
