"""Every error the server answers, as one JSON shape: {"error": {"message", "type", "code"}, "detail"}.

The shape is OpenAI's (which the OpenAI client reads into its exception), used on every route so a
client needs one parser; `detail` repeats the message for clients of FastAPI-style servers (Jina,
Infinity, vLLM clients read it). Status codes: 400 unreadable body (malformed JSON, not UTF-8), 401 missing
or wrong API key, 404 unknown route or model, 405 wrong method, 413 body, input count or input
tokens over a limit, 415 a body not declared JSON, 422 well-formed JSON that does not fit the
request schema, 500 a server fault, 501 an option this server does not implement, 503 shutting down
or over the connection limit, 504 request timeout. Bad input never produces a 500. A client that
disconnects before its answer gets nothing (it is gone): counted in `qrerank_client_disconnects`,
recorded as status 499, never logged as a fault.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qrerank.serving.metrics import ServingMetrics

logger = logging.getLogger("qrerank.serving")

CLIENT_GONE = 499  # nginx's "client closed request": what the metrics record for a disconnect

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
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


def error_body(status: int, message: str) -> dict[str, object]:
    error = {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "code": status}
    return {"error": error, "detail": message}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


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


class ClientDisconnected(Exception):
    """The client closed its connection before its answer: nobody to answer, no server fault.

    `stage`: "body" (while sending its body) or "waiting" (while its work was queued or running).
    """

    def __init__(self, stage: str) -> None:
        super().__init__(f"the client disconnected while {stage}")
        self.stage = stage


def _client_gone(metrics: ServingMetrics) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.observe_disconnect(route, getattr(exc, "stage", "body"))  # starlette's own: while reading the body
        return error_response(
            CLIENT_GONE, str(exc) or "the client disconnected"
        )  # the server drops it: nobody to send to

    return handler


def install_error_handlers(app: FastAPI, metrics: ServingMetrics) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnected, _client_gone(metrics))
    app.add_exception_handler(ClientDisconnect, _client_gone(metrics))
    app.add_middleware(FaultBarrier)


class FaultBarrier:
    """Pure ASGI, around the routes: a server fault is logged and answered JSON 500, and stops here.

    Starlette's own outermost handler answers 500 and then re-raises the exception to the server, and
    uvicorn closes the connection of an app that raised after responding, without `Connection: close`:
    a keep-alive client's next request on it fails. Stopping the exception once the 500 is sent keeps
    the connection usable. A fault after the response has started has nothing left to answer with and
    goes on to the server (which closes the connection, the only signal left).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            logger.error("internal error on %s %s", scope["method"], scope["path"], exc_info=exc)
            message = f"internal server error ({type(exc).__name__}); see the server log"
            await error_response(500, message)(scope, receive, send)
