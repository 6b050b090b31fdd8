"""Bearer API-key check against one or several keys, in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from fastapi import Request

from qrerank.serving.errors import ApiError


def bearer_key_check(api_keys: Sequence[str]) -> Callable[[Request], None]:
    """A FastAPI dependency refusing (401) requests without `Authorization: Bearer <one of api_keys>`.

    Keys and tokens are compared as UTF-8 bytes: ASGI hands header values over as bytes, which
    Starlette decodes as latin-1, so encoding the token back to latin-1 recovers what the client sent.
    Both sides are hashed first and every key is compared, so the time taken depends neither on the
    token a client sends nor on which key (if any) it matches.
    """
    expected = [hashlib.sha256(key.encode("utf-8")).digest() for key in api_keys]

    def check(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip(" \t").encode("latin-1")).digest()  # HTTP whitespace only
        matched = False
        for key in expected:
            matched |= hmac.compare_digest(given, key)
        if not (matched and scheme.lower() == "bearer"):
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
            )

    return check
