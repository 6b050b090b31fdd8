"""Request bodies: read under a size limit, then decode and validate against a schema off the event loop.

Done by hand rather than by FastAPI's body parameters so that each failure gets its own status:
not declared `application/json` 415 (so a web page cannot post a CORS-free "simple" text/plain
request), oversized 413 (checked on Content-Length before reading, and again while streaming), not
UTF-8 or not JSON 400, the wrong shape 422 naming the first offending field, a list longer than any
route takes 413. Decoding runs on a worker thread, so a large body never holds the event loop (and
with it /health and every other request), and it stops at the first error; a list longer than the
server's bound is refused by counting before anything is built (`_check_list_lengths`), so a 4 MiB
flood of items costs no object per item. A client that disconnects
mid-body is ClientDisconnected, not a server fault.
"""

from __future__ import annotations

import asyncio
import functools
import re
import types
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import msgspec
from fastapi import Request
from starlette.requests import ClientDisconnect

from qrerank.serving.errors import ApiError, ClientDisconnected
from qrerank.serving.schemas import Schema

S = TypeVar("S", bound=Schema)

_BYTE_OFFSET = re.compile(r"\(byte (\d+)\)")
_LAST_KEY = re.compile(rb'"([^"\\]{1,64})"\s*:\s*[^:]*$')
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')  # a whole string, or one structural byte
_NESTED = re.compile(rb'["\[{]')  # past an array's "[": a string or a nested value, so not only numbers


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


async def read_request(request: Request, schema: type[S], max_bytes: int, max_items: int | None = None) -> S:
    """The body of `request` decoded into `schema` (`decode`); ApiError 400/413/415/422 otherwise."""
    raw = await read_body(request, max_bytes)
    return await asyncio.to_thread(decode, schema, raw, max_items)


def raw_fields(raw: bytes, names: tuple[str, ...]) -> dict[str, memoryview] | None:
    """The JSON text of each field of `names` the object `raw` has, or None if `raw` is not a JSON object."""
    try:
        values = msgspec.json.decode(raw, type=_raw_fields(names))
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):  # decoding the body names it (400/422)
        return None
    found = {name: memoryview(getattr(values, f"f{i}")) for i, name in enumerate(names)}
    return {name: value for name, value in found.items() if len(value)}


@functools.cache
def _raw_fields(names: tuple[str, ...]) -> type[msgspec.Struct]:
    """A Struct that reads the top-level fields `names` of a JSON object as msgspec.Raw (empty where absent)
    and skips every other field without building it; a dict[str, Raw] would make a key and a Raw for each
    of a million tiny fields (56 MB out of 4.5 MiB)."""
    fields = [(f"f{i}", msgspec.Raw, msgspec.field(default=msgspec.Raw(), name=name)) for i, name in enumerate(names)]
    return msgspec.defstruct("RawFields", fields, kw_only=True)


def _check_list_lengths(schema: type, raw: bytes, max_items: int) -> None:
    """413 if a top-level list field of `schema` in the body `raw` holds more than `max_items` items, found by
    counting the list's top-level commas up to the bound, before anything is decoded. msgspec checks a
    `max_length` only once it has built the whole list: a million tiny items, 58-96 MB out of 4 MiB.
    A list that may hold token ids and holds only numbers is not bounded: one input's ids may be cut to
    max_length, so any number is valid, and ints cost little (a cached object, or 28 bytes for 2 to 7 of JSON)."""
    fields = dict(_list_fields(schema))
    if not fields or raw.count(b",") < max_items:  # no list in the body can be that long (a C-speed count)
        return
    over = _walk_top_level(raw, fields, max_items)
    if over is None:  # the walk ran out of steps or met a numbers-only list: msgspec finds the fields' text
        values = (raw_fields(raw, tuple(fields)) or {}).items()  # not a JSON object: decoding says what is wrong
        over = next((name for name, value in values if _bounded_over(value, fields[name], max_items)), "")
    if over:
        raise ApiError(413, f"{over} holds more than {max_items} items; this server accepts at most {max_items}")


def _bounded_over(value: memoryview, may_be_ids: bool, max_items: int) -> bool:
    if may_be_ids and _NESTED.search(value, 1) is None:  # numbers only (a wrong one fails decoding)
        return False
    return _more_items_than(value, max_items)


def _walk_top_level(raw: bytes, fields: dict[str, bool], max_items: int) -> str | None:
    """The name of a list field of `fields` that holds more than `max_items` items, "" if none does, or None
    when the walk cannot tell within its budget of steps. It reads the body's strings and structural bytes
    from the start and stops at the bound, so a 4 MiB flood costs ~max_items Python steps (interruptible,
    unlike the 20-30 ms msgspec spends holding the GIL to skip through 4 MiB to find the fields)."""
    budget = 8 * max_items + 64  # a legitimate body at the bound takes a few steps per item
    depth, expect_key, key, counting, commas = 0, False, "", "", 0
    numbers_only = False  # the counted list may hold token ids and has held nothing but numbers so far
    for step, token in enumerate(_STRUCTURE.finditer(raw)):
        text = token.group()
        byte = text[:1]
        if step > budget or (depth == 0 and byte != b"{"):  # too long to walk, or not one JSON object
            return None
        if byte == b'"':
            if depth == 1 and expect_key:
                key, expect_key = _key_name(text), False
            elif depth == 2:  # a string item
                numbers_only = False
        elif byte in b"[{":
            depth += 1
            expect_key = byte == b"{" and depth == 1
            if depth == 2 and byte == b"[" and key in fields:
                counting, commas, numbers_only = key, 0, fields[key]
            elif depth == 3:  # a nested item
                numbers_only = False
        elif byte in b"]}":
            depth -= 1
            if depth == 1:
                counting = ""
            elif depth <= 0:
                return "" if depth == 0 else None  # the whole object walked, or a stray bracket
        elif depth == 1:
            expect_key = True
        elif depth == 2 and counting:
            commas += 1
            if commas >= max_items:
                return None if numbers_only else counting  # numbers so far: msgspec's pass decides
    return ""  # unterminated: decoding says what is wrong


def _key_name(text: bytes) -> str:
    """The name a JSON key's text stands for (escapes, as msgspec reads them, included)."""
    if b"\\" not in text:
        return text[1:-1].decode("utf-8", "replace")
    try:
        return str(msgspec.json.decode(text))
    except msgspec.DecodeError:
        return ""


def _more_items_than(value: memoryview, limit: int) -> bool:
    """Whether the JSON array `value` (any other value: False) has more than `limit` items. Strings are
    skipped whole by the pattern, so only their number, not their length, costs Python steps."""
    if value[:1] != b"[":  # a Raw value starts at its own first byte
        return False
    depth = commas = 0
    for token in _STRUCTURE.finditer(value):
        byte = token.group()[:1]
        if byte in (b"[", b"{"):
            depth += 1
        elif byte in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                return False
        elif byte == b"," and depth == 1:
            commas += 1
            if commas >= limit:
                return True
    return False


@functools.cache
def _list_fields(schema: type) -> tuple[tuple[str, bool], ...]:
    """(JSON name, may hold token ids) of each top-level field of the Struct `schema` that may be a list."""
    if not (isinstance(schema, type) and issubclass(schema, msgspec.Struct)):
        return ()
    found = []
    for info in msgspec.structs.fields(schema):
        items = _list_items(info.type)
        if items is not None:
            found.append((info.encode_name, _may_be_int(items)))
    return tuple(found)


def _list_items(tp: Any) -> Any:
    """The item type of the list type in `tp` (through unions and Annotated), or None if `tp` holds no list."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is list:
        return args[0]
    if origin is Annotated:
        return _list_items(args[0])
    if origin in (Union, types.UnionType):
        return next((items for items in map(_list_items, args) if items is not None), None)
    return None


def _may_be_int(tp: Any) -> bool:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _may_be_int(args[0])
    if origin in (Union, types.UnionType):
        return any(map(_may_be_int, args))
    return tp is int


def decode(schema: type[S], raw: bytes, max_items: int | None = None) -> S:
    """`raw` decoded into `schema`, its top-level lists at most `max_items` long; ApiError 400/413/422 otherwise."""
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object")
    if max_items is not None:
        _check_list_lengths(schema, raw, max_items)
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
