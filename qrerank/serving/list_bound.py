"""The bound on a request body's top-level lists, counted on its JSON text before anything is decoded.

msgspec checks a `max_length` only once it has built the whole list: a million tiny items, 58-96 MB out of
4 MiB. So a list field is bounded by counting its top-level commas up to the bound: first by walking the
body's strings and structural bytes from the start (`_walk_top_level`, which stops at the bound), and only
past the walk's budget of steps by msgspec's pass over the whole body (`raw_fields`). The walk reads the
first bytes of a body as it would read the whole, so a flood is refused from its first chunk, before the
rest has been read (`ListBound.check_prefix`, called by body.read_body as the body streams in).

A list that may hold token ids and holds only numbers is not bounded: one input's ids may be cut to
max_length, so any number is valid, and ints cost little (a cached object, or 28 bytes for 2 to 7 of JSON).
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Collection
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec

from qrerank.serving.errors import ApiError

# A whole string (or, at the end of a body's first bytes, a string cut short, read as one token so that
# no comma or bracket inside it is taken for structure), or one structural byte.
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{},]')
_NESTED = re.compile(rb'["\[{]')  # past an array's "[": a string or a nested value, so not only numbers


class ListBound:
    """The top-level list fields of a schema, each held to `max_items` items."""

    def __init__(self, fields: dict[str, bool], max_items: int) -> None:
        self.fields = fields  # JSON name -> whether the list may hold token ids
        self.max_items = max_items

    @classmethod
    def of(cls, schema: type, max_items: int, names: Collection[str] | None = None) -> ListBound:
        """The bound on the list fields of the Struct `schema` (only those of `names`, where given)."""
        fields = {name: ids for name, ids in _list_fields(schema) if names is None or name in names}
        return cls(fields, max_items)

    def check(self, raw: bytes) -> None:
        """413 if a list field of the whole body `raw` holds more than `max_items` items."""
        if not self.fields or raw.count(b",") < self.max_items:  # no list can be that long (a C-speed count)
            return
        over = _walk_top_level(raw, self.fields, self.max_items)
        if over is None:  # the walk ran out of steps or met a numbers-only list: msgspec finds the fields' text
            values = (raw_fields(raw, tuple(self.fields)) or {}).items()  # not an object: decoding names the error
            over = next((name for name, text in values if _bounded_over(text, self.fields[name], self.max_items)), "")
        if over:
            self._refuse(over)

    def check_prefix(self, prefix: bytes) -> None:
        """413 if the first bytes of a body, `prefix`, already show a list over the bound: what `check` would
        find in the whole body, as the walk reads both the same way up to where `prefix` ends. Anything
        else (no list over the bound yet, or a walk out of steps) is left to `check` of the whole body."""
        over = _walk_top_level(prefix, self.fields, self.max_items)
        if over:
            self._refuse(over)

    def _refuse(self, name: str) -> None:
        limit = self.max_items
        raise ApiError(413, f"{name} holds more than {limit} items; this server accepts at most {limit}")


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
