"""Running the app under uvicorn: in the foreground (`qrerank serve`) or on a background thread.

Graceful shutdown is uvicorn's: on SIGINT/SIGTERM it stops accepting connections, waits up to
`graceful_timeout_s` for the requests in flight, then runs the app's shutdown (closing the engine).
Connections are held to `ConnectionLimits` (connections.py): a cap, and deadlines for idle, header
and body stages.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from qrerank.serving.connections import reserve_file_descriptors, uvicorn_settings
from qrerank.serving.options import ConnectionLimits

DEFAULT_HOST = "127.0.0.1"  # reachable from this machine only unless asked otherwise
DEFAULT_PORT = 8000
DEFAULT_GRACEFUL_TIMEOUT_S = 30.0


def serve(
    app: FastAPI,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    graceful_timeout_s: float = DEFAULT_GRACEFUL_TIMEOUT_S,
    log_level: str = "info",
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve `app` until SIGINT/SIGTERM."""
    limits = limits or ConnectionLimits()
    reserve_file_descriptors(limits)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout_s,
        lifespan="on",
        **uvicorn_settings(limits),
    )
    uvicorn.Server(config).run()


class BackgroundServer:
    """`app` served on a thread of this process, on a free loopback port (tests, notebooks, benchmarks).

    with BackgroundServer(app) as server:
        httpx.get(server.url + "/health")
    Leaving the block shuts down gracefully and joins the thread.
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str = DEFAULT_HOST,
        graceful_timeout_s: float = DEFAULT_GRACEFUL_TIMEOUT_S,
        log_level: str = "warning",
        limits: ConnectionLimits | None = None,
    ) -> None:
        limits = limits or ConnectionLimits()
        reserve_file_descriptors(limits)
        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((host, 0))  # the kernel picks a free port; binding here leaves no race with others
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            app,
            log_level=log_level,
            timeout_graceful_shutdown=graceful_timeout_s,
            lifespan="on",
            access_log=False,
            **uvicorn_settings(limits),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="qrerank-server", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start within {timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"the server on {self.url} did not stop within {timeout_s} s")

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
