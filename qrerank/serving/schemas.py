"""The base of every request body schema, and its strict variant (`--strict-fields`).

Bodies are msgspec Structs, decoded straight from the body bytes: no intermediate Python objects,
unknown fields skipped unbuilt, and decoding stops at its first error, so a flood of wrongly typed items
costs microseconds, not an object per item (valid items are built, so list_bound.py counts a list before
decoding it). No type coercion ("5" is not 5, 1 is not true).

Unknown fields are ignored, as text-embeddings-inference and OpenAI do, so a client written for a
peer API keeps working when it sends a field qrerank has no use for. Every field that a peer API
documents is declared by the schema of its route: implemented, or accepted and ignored where it
cannot change the result (`user`, `priority`), or refused with a message where qrerank cannot do what
it asks. `strict_variant` gives the same schema refusing undeclared fields by name, for servers that
prefer an error to a silently ignored option. Each API family's schemas live with its routes
(qrerank/serving/api/); limits that depend on the server (input counts, top_n, dimensions) are
checked there too.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import msgspec

NonEmpty = msgspec.Meta(min_length=1)
Positive = msgspec.Meta(ge=1)
TokenId = Annotated[int, msgspec.Meta(ge=0)]

S = TypeVar("S", bound="Schema")


class Schema(msgspec.Struct, kw_only=True):
    """Base of every request body; undeclared fields are ignored (see `strict_variant`)."""


@functools.cache
def strict_variant(schema: type[S]) -> type[S]:
    """`schema` refusing undeclared fields (422 naming the field), nested schemas included.

    A subclass, built once per schema, so handlers treat its instances exactly as `schema`'s.
    """
    fields = []
    for info in msgspec.structs.fields(schema):
        strict = _strict_type(info.type)
        if strict is not info.type:  # a nested schema: redeclare the field with its strict variant
            default = msgspec.field(default=info.default, default_factory=info.default_factory, name=info.encode_name)
            fields.append((info.name, strict, default))
    return msgspec.defstruct(  # type: ignore[return-value]
        schema.__name__, fields, bases=(schema,), module=schema.__module__, kw_only=True, forbid_unknown_fields=True
    )


def _strict_type(tp: Any) -> Any:
    """`tp` with every Schema inside it (through unions, lists, dicts and Annotated) made strict."""
    if isinstance(tp, type) and issubclass(tp, Schema):
        return strict_variant(tp)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:  # (type, *metadata)
        inner = _strict_type(args[0])
        return tp if inner is args[0] else Annotated[(inner, *args[1:])]  # type: ignore[valid-type]
    strict_args = tuple(map(_strict_type, args))
    if all(new is old for new, old in zip(strict_args, args)):
        return tp
    if origin in (Union, types.UnionType):
        return typing.Union[strict_args]  # noqa: UP007
    return origin[strict_args]
