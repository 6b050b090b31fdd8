"""create_app: the FastAPI application around an AsyncEngine (routes, API key, metrics, errors, lifespan).

GET /health is open (for load balancers): 200 while the engine serves, 503 with the reason while it
does not (closing, or its batching worker just failed). Every other route needs an API key when
keys are set. No CORS headers are sent: browsers get no cross-origin access, and POST routes take
only `application/json` bodies (body.py). On shutdown the server stops taking connections, lets the
requests in flight finish, and only then closes the engine (which finishes everything it has queued).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse, Response

from qrerank.embedder import Embedder
from qrerank.reranker import Reranker
from qrerank.serving.api import Service, register
from qrerank.serving.async_engine import AsyncEngine
from qrerank.serving.auth import bearer_key_check
from qrerank.serving.errors import error_response, install_error_handlers
from qrerank.serving.metrics import MetricsMiddleware, ServingMetrics
from qrerank.serving.options import ServerOptions

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def create_app(reranker: Reranker | None, embedder: Embedder | None, options: ServerOptions) -> FastAPI:
    """The server of a reranker and/or an embedder; `options` names each one served (and only those).

    The app owns its AsyncEngine and metrics (`app.state.engine`, `app.state.metrics`).
    """
    if not isinstance(options, ServerOptions):
        raise TypeError(f"options must be a ServerOptions, got {type(options).__name__}")
    for role, model, name in (
        ("reranker", reranker, options.reranker_name),
        ("embedder", embedder, options.embedder_name),
    ):
        if (model is None) != (name is None):
            given = "given" if model is not None else "not given"
            raise ValueError(
                f"the {role} is {given} but options.{role}_name is {name!r}; name a model iff it is served"
            )
    metrics = ServingMetrics()
    engine = AsyncEngine(
        reranker,
        embedder,
        max_wait_ms=options.max_wait_ms,
        max_batch_sequences=options.max_batch_sequences,
        observer=metrics,
    )
    metrics.engine_faults.set_function(lambda: engine.faults)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.close()

    app = FastAPI(title="qrerank", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics = engine, metrics
    install_error_handlers(app, metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/health")
    async def health() -> Response:
        state = engine.health()
        if state.ok:
            return JSONResponse({"status": "ok"})
        return error_response(503, f"{state.state}: {state.reason}")

    keys = [Depends(bearer_key_check(options.api_keys))] if options.api_keys else []
    protected = APIRouter(dependencies=keys)

    @protected.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    register(protected, Service(engine, options, metrics))
    app.include_router(protected)
    return app
