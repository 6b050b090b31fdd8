"""Bearer API-key check, in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from fastapi import Request

from qrerank.serving.errors import ApiError


def bearer_key_check(api_key: str) -> Callable[[Request], None]:
    """A FastAPI dependency refusing (401) requests without `Authorization: Bearer <api_key>`.

    Both sides are hashed first, so the comparison takes the same time whatever the length or the
    first differing byte of the key a client sends.
    """
    expected = hashlib.sha256(api_key.encode()).digest()

    def check(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        if not (hmac.compare_digest(given, expected) and scheme.lower() == "bearer"):
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
            )

    return check
