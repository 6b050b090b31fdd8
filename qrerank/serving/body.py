"""Request bodies: read under a size limit, then decode and validate against a schema off the event loop.

Done by hand rather than by FastAPI's body parameters so that each failure gets its own status:
not declared `application/json` 415 (so a web page cannot post a CORS-free "simple" text/plain
request), oversized 413 (checked on Content-Length before reading, and again while streaming), not
UTF-8 or not JSON 400, the wrong shape 422 naming the first offending field, a list longer than any
route takes 413. Decoding runs on a worker thread, so a large body never holds the event loop (and
with it /health and every other request), and it stops at the first error: a 4 MiB flood of items
costs an object per item only up to the list bound (`bounded_variant`). A client that disconnects
mid-body is ClientDisconnected, not a server fault.
"""

from __future__ import annotations

import asyncio
import functools
import re
import types
import typing
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import msgspec
from fastapi import Request
from starlette.requests import ClientDisconnect

from qrerank.serving.errors import ApiError, ClientDisconnected
from qrerank.serving.schemas import Schema

S = TypeVar("S", bound=Schema)

_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")
_TOO_LONG = re.compile(r"Expected `array` of length <= (\d+) - at `\$\.?(.*)`")
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


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body of `request`, declared JSON and within `max_bytes`; ApiError 413/415 otherwise."""
    check_json_content_type(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:  # a chunked body, or a Content-Length that lied
                raise ApiError(413, f"request body exceeds the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected("body") from None
    return b"".join(chunks)


async def read_request(request: Request, schema: type[S], max_bytes: int) -> S:
    """The body of `request` decoded into `schema`; ApiError 400/413/415/422 otherwise."""
    raw = await read_body(request, max_bytes)
    return await asyncio.to_thread(decode, schema, raw)


@functools.cache
def bounded_variant(schema: type[S], max_items: int) -> type[S]:
    """`schema` (a subclass of it) whose top-level lists hold at most `max_items` items, so that decoding
    stops at the first item past that instead of building an object per item of a flood of small ones
    (`[{}, {}, ...]` is 1.4M dicts in 4 MiB). Handlers still check their own, lower, limits. A list that
    may hold token ids is left unbounded: one input's ids may be cut to max_length, so any number is
    valid, and ints cost little (a cached object, or 28 bytes for 2 to 7 bytes of JSON)."""
    fields = []
    for info in msgspec.structs.fields(schema):
        bounded = _bounded_lists(info.type, max_items)
        if bounded is not info.type:
            default = msgspec.field(default=info.default, default_factory=info.default_factory, name=info.encode_name)
            fields.append((info.name, bounded, default))
    return msgspec.defstruct(schema.__name__, fields, bases=(schema,), module=schema.__module__, kw_only=True)  # type: ignore[return-value]


def _bounded_lists(tp: Any, max_items: int) -> Any:
    """`tp` with each list type in it (through unions and Annotated, not inside items) at most `max_items` long."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is list:
        return tp if _may_be_int(args[0]) else Annotated[tp, msgspec.Meta(max_length=max_items)]
    if origin is Annotated:  # (type, *metadata)
        inner = _bounded_lists(args[0], max_items)
        return tp if inner is args[0] else Annotated[(inner, *args[1:])]  # type: ignore[valid-type]
    if origin in (Union, types.UnionType):
        bounded = tuple(_bounded_lists(arg, max_items) for arg in args)
        return tp if all(new is old for new, old in zip(bounded, args)) else typing.Union[bounded]  # noqa: UP007
    return tp


def _may_be_int(tp: Any) -> bool:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _may_be_int(args[0])
    if origin in (Union, types.UnionType):
        return any(map(_may_be_int, args))
    return tp is int


def decode(schema: type[S], raw: bytes) -> S:
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(raw, type=schema)
    except msgspec.ValidationError as err:
        too_long = _TOO_LONG.fullmatch(str(err))
        if too_long:
            limit, field = too_long.groups()
            raise ApiError(413, f"{field} holds more than {limit} items; this server accepts at most {limit}") from None
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
