"""Request bodies: read under a size limit, decode strict UTF-8 JSON, validate against a schema.

Done by hand rather than by FastAPI's body parameters so that each failure gets its own status:
oversized 413 (checked on Content-Length before reading, and again while streaming), not UTF-8 or
not JSON 400, the wrong shape 422 with every offending field named.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from qrerank.serving.errors import ApiError

Schema = TypeVar("Schema", bound=BaseModel)

_MAX_LISTED_ERRORS = 5


async def read_json(request: Request, max_bytes: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:  # a chunked body, or a Content-Length that lied
            raise ApiError(413, f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {err.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # a body of nothing but nested brackets
        raise ApiError(400, "the request body nests JSON too deeply") from None
    except json.JSONDecodeError as err:
        raise ApiError(
            400, f"the request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None


def _refuse_constant(name: str) -> Any:
    """Python's json accepts NaN and Infinity; JSON does not."""
    raise ApiError(400, f"the request body is not valid JSON: {name} is not a JSON value")


def parse(schema: type[Schema], data: Any) -> Schema:
    if not isinstance(data, dict):
        raise ApiError(422, f"the request body must be a JSON object, got a JSON {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors(include_url=False)]
        more = len(problems) - _MAX_LISTED_ERRORS
        listed = "; ".join(problems[:_MAX_LISTED_ERRORS]) + (f"; and {more} more" if more > 0 else "")
        raise ApiError(422, f"invalid {schema.__name__}: {listed}") from None


def _describe(error: Any) -> str:
    # Union members appear in the location ("documents.0.str"): it says which alternatives were tried.
    location = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{location}: {error['msg']}"
