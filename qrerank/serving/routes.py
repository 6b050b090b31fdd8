"""The API routes: OpenAI embeddings, Cohere/Jina rerank, DeepInfra inference, text-embeddings-inference.

Every route follows the same path: read and validate the body (body.py), resolve the model name
(404 if not served), check the input count (413), count the recipe tokens and apply the per-input
limit (tokens.py, 413), then await the AsyncEngine under the request timeout (504), and answer in
the peer API's response shape.
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

from qrerank.requests import EmbedRequest, ScoreRequest, Tokenized
from qrerank.serving.async_engine import AsyncEngine
from qrerank.serving.body import read_request
from qrerank.serving.errors import ApiError
from qrerank.serving.metrics import ServingMetrics
from qrerank.serving.options import ServerOptions
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
        vectors, tokens = await self._embed(texts, body.instruction, body.dimensions, True, False, "input")
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
        scores, tokens = await self._score([body.query], docs, body.instruction, False, False)
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
        scores, tokens = await self._score(body.queries, body.documents, body.instruction, False, False)
        return JSONResponse({"scores": scores.tolist(), "input_tokens": tokens})

    async def tei_embed(self, request: Request) -> JSONResponse:
        body = await read_request(request, TeiEmbedRequest, self.options.max_body_bytes)
        self._embedder_name(None)
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        truncate = self.options.auto_truncate if body.truncate is None else body.truncate
        vectors, _ = await self._embed(texts, body.instruction, body.dimensions, body.normalize, truncate, "inputs")
        return JSONResponse(vectors.tolist())

    async def tei_rerank(self, request: Request) -> JSONResponse:
        body = await read_request(request, TeiRerankRequest, self.options.max_body_bytes)
        self._reranker_name(None)
        truncate = self.options.auto_truncate if body.truncate is None else body.truncate
        scores, _ = await self._score([body.query], body.texts, body.instruction, body.raw_scores, truncate)
        order = np.argsort(-scores, kind="stable")
        results: list[dict[str, Any]] = [{"index": int(i), "score": float(scores[i])} for i in order]
        if body.return_text:
            for result in results:
                result["text"] = body.texts[result["index"]]
        return JSONResponse(results)

    async def _embed(
        self,
        texts: list[str],
        instruction: str | None,
        dim: int | None,
        normalize: bool,
        truncate: bool,
        field: str,
    ) -> tuple[np.ndarray, int]:
        """Embeddings [n, dim] and the request's prompt tokens."""
        assert self.engine.embedder is not None and self.embed_tokens is not None
        self._check_count(len(texts), field)
        try:
            self.engine.embedder.check(EmbedRequest(texts, instruction, dim, normalize))
        except ValueError as err:
            raise ApiError(422, f"dimensions: {err}") from None
        counter = self.embed_tokens

        async def run() -> tuple[np.ndarray, int]:
            request = EmbedRequest(texts, instruction, dim, normalize)
            tokenized = await asyncio.to_thread(counter.embed_tokens, request, truncate, field)
            vectors = await self.engine.embed(
                texts, instruction=instruction, dim=dim, normalize=normalize, tokenized=tokenized
            )
            return vectors, tokenized.tokens

        vectors, tokens = await self._within_timeout(run())
        self.metrics.tokens.labels(self.options.embedder_name).inc(tokens)
        return vectors, tokens

    async def _score(
        self, queries: Sequence[str], docs: list[str], instruction: str | None, raw: bool, truncate: bool
    ) -> tuple[np.ndarray, int]:
        """Scores [len(docs)] (one query for all documents, or one per document) and the prompt tokens."""
        assert self.rerank_tokens is not None
        self._check_count(len(docs), "documents")
        pairs = list(queries) * len(docs) if len(queries) == 1 else list(queries)
        by_query: dict[str, list[int]] = {}  # the documents of one query form one request (a shared prefix)
        for i, query in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        counter = self.rerank_tokens

        def count() -> list[Tokenized]:
            return [
                counter.score_tokens(ScoreRequest(q, [docs[i] for i in idx], instruction), truncate, "documents", idx)
                for q, idx in by_query.items()
            ]

        async def run() -> tuple[np.ndarray, int]:
            tokenized = await asyncio.to_thread(count)
            parts = await asyncio.gather(
                *(
                    self.engine.score(query, [docs[i] for i in idx], instruction=instruction, raw=raw, tokenized=t)
                    for (query, idx), t in zip(by_query.items(), tokenized, strict=True)
                )
            )
            scores = np.empty(len(docs), dtype=np.float32)
            for idx, values in zip(by_query.values(), parts, strict=True):
                scores[idx] = values
            return scores, sum(t.tokens for t in tokenized)

        scores, tokens = await self._within_timeout(run())
        self.metrics.tokens.labels(self.options.reranker_name).inc(tokens)
        return scores, tokens

    async def _within_timeout(self, work: Awaitable[T]) -> T:
        """Cancelling on timeout also drops the request's queued work (AsyncEngine removes cancelled callers)."""
        try:
            return await asyncio.wait_for(work, self.options.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request was not answered within {self.options.request_timeout_s} s") from None

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
