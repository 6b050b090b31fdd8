"""Every error the server answers, as one JSON shape: {"error": {"message", "type", "code"}, "detail"}.

The shape is OpenAI's (which the OpenAI client reads into its exception), used on every route so a
client needs one parser; `detail` repeats the message for clients of FastAPI-style servers (Jina,
Infinity, vLLM clients read it). Status codes: 400 unreadable body (malformed JSON, not UTF-8), 401 missing
or wrong API key, 404 unknown route or model, 405 wrong method, 413 body, input count or input
tokens over a limit, 422 well-formed JSON that does not fit the request schema, 500 a server fault,
501 an option this server does not implement, 503 shutting down, 504 request timeout. Bad input never produces a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger("qrerank.serving")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    500: "server_error",
    501: "not_implemented_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    """An HTTP error with a message for the client (never a traceback)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    error = {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "code": status}
    body = {"error": error, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no route: 404, wrong method: 405) in the same shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.url.path} does not take {request.method}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal server error ({type(exc).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
