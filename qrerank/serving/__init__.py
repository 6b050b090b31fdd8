"""Serving: AsyncEngine (in-process micro-batching) and, with the `serve` extra, the HTTP server.

`qrerank.serving.app` and `qrerank.serving.server` need fastapi and uvicorn (`pip install "qrerank[serve]"`);
AsyncEngine needs nothing beyond qrerank itself.
"""

from qrerank.serving.async_engine import AsyncEngine, BatchObserver, EngineClosed, WorkerFault
from qrerank.serving.health import EngineHealth

__all__ = ["AsyncEngine", "BatchObserver", "EngineClosed", "EngineHealth", "WorkerFault"]
