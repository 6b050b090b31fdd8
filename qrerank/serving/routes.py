"""The API routes: OpenAI embeddings, Cohere/Jina rerank, DeepInfra inference, text-embeddings-inference.

Every route follows the same path: read and validate the body (body.py), resolve the model name
(404 if not served), check the input count (413), make the engine requests and count their recipe
tokens on a worker thread (prepare.py; the per-input limit, 413), then await the AsyncEngine while
the client waits, under the request timeout (lifecycle.py: 504), and answer in the peer API's shape.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from qrerank.serving.async_engine import AsyncEngine
from qrerank.serving.body import read_request
from qrerank.serving.errors import ApiError
from qrerank.serving.lifecycle import all_of, while_connected
from qrerank.serving.metrics import ServingMetrics
from qrerank.serving.options import ServerOptions
from qrerank.serving.prepare import EmbedWork, ScoreWork, embed_work, score_work
from qrerank.serving.schemas import (
    InferenceRequest,
    OpenAIEmbeddingsRequest,
    RerankRequest,
    TeiEmbedRequest,
    TeiRerankRequest,
)
from qrerank.serving.tokens import TokenCounter

T = TypeVar("T")


class Routes:
    """Handlers bound to one engine, its served names, limits and metrics."""

    def __init__(self, engine: AsyncEngine, options: ServerOptions, metrics: ServingMetrics) -> None:
        self.engine = engine
        self.options = options
        self.metrics = metrics
        self.rerank_tokens = TokenCounter(engine.reranker) if engine.reranker is not None else None
        self.embed_tokens = TokenCounter(engine.embedder) if engine.embedder is not None else None
        self.created = int(time.time())

    def register(self, router: APIRouter) -> None:
        post = ["POST"]
        router.add_api_route("/v1/embeddings", self.openai_embeddings, methods=post)
        router.add_api_route("/v1/openai/embeddings", self.openai_embeddings, methods=post)
        router.add_api_route("/v1/rerank", self.rerank, methods=post)
        router.add_api_route("/v1/inference/{model:path}", self.inference, methods=post)
        router.add_api_route("/embed", self.tei_embed, methods=post)
        router.add_api_route("/rerank", self.tei_rerank, methods=post)
        router.add_api_route("/v1/models", self.models, methods=["GET"])

    async def models(self) -> dict[str, Any]:
        served = [(self.options.reranker_name, "rerank"), (self.options.embedder_name, "embed")]
        data = [
            {"id": name, "object": "model", "created": self.created, "owned_by": "qrerank", "task": task}
            for name, task in served
            if name is not None
        ]
        return {"object": "list", "data": data}

    async def openai_embeddings(self, request: Request) -> JSONResponse:
        body = await read_request(request, OpenAIEmbeddingsRequest, self.options.max_body_bytes)
        name = self._embedder_name(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors, tokens = await self._embed(request, texts, body.instruction, body.dimensions, True, False, "input")
        if body.encoding_format == "base64":
            encoded: list[Any] = [base64.b64encode(v.astype("<f4", copy=False).tobytes()).decode() for v in vectors]
        else:
            encoded = vectors.tolist()
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})

    async def rerank(self, request: Request) -> JSONResponse:
        body = await read_request(request, RerankRequest, self.options.max_body_bytes)
        name = self._reranker_name(body.model)
        docs = [d if isinstance(d, str) else d.text for d in body.documents]
        if body.top_n is not None and body.top_n > self.options.max_inputs:
            raise ApiError(422, f"top_n must be between 1 and {self.options.max_inputs}, got {body.top_n}")
        scores, tokens = await self._score(request, [body.query], docs, body.instruction, False, False)
        order = np.argsort(-scores, kind="stable")[: body.top_n]  # best first; ties keep the documents' order
        results: list[dict[str, Any]] = [{"index": int(i), "relevance_score": float(scores[i])} for i in order]
        if body.return_documents:
            for result in results:
                result["document"] = {"text": docs[result["index"]]}
        response = {"id": str(uuid.uuid4()), "model": name, "results": results, "usage": {"total_tokens": tokens}}
        return JSONResponse(response)

    async def inference(self, request: Request, model: str) -> JSONResponse:
        if model != self.options.reranker_name:
            raise self._unknown_model(model, "reranker")
        body = await read_request(request, InferenceRequest, self.options.max_body_bytes)
        if len(body.queries) not in (1, len(body.documents)):
            raise ApiError(
                422,
                f"queries must hold one query for all documents or one per document ({len(body.documents)}), "
                f"got {len(body.queries)}",
            )
        scores, tokens = await self._score(request, body.queries, body.documents, body.instruction, False, False)
        return JSONResponse({"scores": scores.tolist(), "input_tokens": tokens})

    async def tei_embed(self, request: Request) -> JSONResponse:
        body = await read_request(request, TeiEmbedRequest, self.options.max_body_bytes)
        self._embedder_name(None)
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        truncate = self.options.auto_truncate if body.truncate is None else body.truncate
        vectors, _ = await self._embed(
            request, texts, body.instruction, body.dimensions, body.normalize, truncate, "inputs"
        )
        return JSONResponse(vectors.tolist())

    async def tei_rerank(self, request: Request) -> JSONResponse:
        body = await read_request(request, TeiRerankRequest, self.options.max_body_bytes)
        self._reranker_name(None)
        truncate = self.options.auto_truncate if body.truncate is None else body.truncate
        scores, _ = await self._score(request, [body.query], body.texts, body.instruction, body.raw_scores, truncate)
        order = np.argsort(-scores, kind="stable")
        results: list[dict[str, Any]] = [{"index": int(i), "score": float(scores[i])} for i in order]
        if body.return_text:
            for result in results:
                result["text"] = body.texts[result["index"]]
        return JSONResponse(results)

    async def _embed(
        self,
        request: Request,
        texts: list[str],
        instruction: str | None,
        dim: int | None,
        normalize: bool,
        truncate: bool,
        field: str,
    ) -> tuple[np.ndarray, int]:
        """Embeddings [n, dim] and the request's prompt tokens."""
        embedder, counter = self.engine.embedder, self.embed_tokens
        assert embedder is not None and counter is not None
        self._check_count(len(texts), field)

        async def run() -> tuple[EmbedWork, np.ndarray]:
            work = await asyncio.to_thread(
                embed_work, counter, embedder, texts, instruction, dim, normalize, truncate, field
            )
            return work, await self.engine.submit(work.request, tokenized=work.tokenized)

        work, vectors = await self._within_timeout(request, run())
        self.metrics.tokens.labels(self.options.embedder_name).inc(work.tokens)
        return vectors, work.tokens

    async def _score(
        self,
        request: Request,
        queries: Sequence[str],
        docs: list[str],
        instruction: str | None,
        raw: bool,
        truncate: bool,
    ) -> tuple[np.ndarray, int]:
        """Scores [len(docs)] (one query for all documents, or one per document) and the prompt tokens."""
        counter = self.rerank_tokens
        assert counter is not None
        self._check_count(len(docs), "documents")

        async def run() -> tuple[ScoreWork, list[np.ndarray]]:
            work = await asyncio.to_thread(score_work, counter, queries, docs, instruction, truncate, "documents")
            parts = await all_of(self.engine.submit(r, raw=raw, tokenized=t) for r, t in work.requests)
            return work, parts

        work, parts = await self._within_timeout(request, run())
        self.metrics.tokens.labels(self.options.reranker_name).inc(work.tokens)
        return work.scores(parts), work.tokens

    async def _within_timeout(self, request: Request, work: Awaitable[T]) -> T:
        """`work` cancelled (its queued engine work dropped) when the client leaves or the timeout passes (504)."""
        return await while_connected(request, work, self.options.request_timeout_s)

    def _check_count(self, count: int, field: str) -> None:
        if count > self.options.max_inputs:
            raise ApiError(413, f"{field} holds {count} items; this server accepts at most {self.options.max_inputs}")

    def _reranker_name(self, requested: str | None) -> str:
        name = self.options.reranker_name
        if name is None or (requested is not None and requested != name):
            raise self._unknown_model(requested, "reranker")
        return name

    def _embedder_name(self, requested: str | None) -> str:
        name = self.options.embedder_name
        if name is None or (requested is not None and requested != name):
            raise self._unknown_model(requested, "embedding model")
        return name

    def _unknown_model(self, requested: str | None, role: str) -> ApiError:
        served = ", ".join(repr(n) for n in self.options.served_names)
        if requested is None:
            return ApiError(404, f"this server serves no {role}; served models: {served}")
        return ApiError(404, f"the {role} {requested!r} is not served here; served models: {served}")
