"""DeepInfra: POST /v1/inference/{model}, one query for all documents (`query`, or `queries` of one) or
one query per document (`queries`) -> {"scores", "input_tokens"}. Its OpenAI-compatible embeddings are
served by openai.py under /v1/openai/embeddings.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from starlette.responses import Response

from qrerank.serving.answer import json_answer
from qrerank.serving.api.service import Service
from qrerank.serving.errors import ApiError
from qrerank.serving.schemas import NonEmpty, Schema


class InferenceRequest(Schema):
    documents: Annotated[list[str], NonEmpty]
    queries: Annotated[list[str], NonEmpty] | None = None
    query: str | None = None
    instruction: str | None = None  # the Qwen3 task instruction, as DeepInfra's Qwen3 rerankers take it


def register(router: APIRouter, service: Service) -> None:
    router.add_api_route("/v1/inference/{model:path}", DeepInfraRoutes(service).inference, methods=["POST"])


class DeepInfraRoutes:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def inference(self, request: Request, model: str) -> Response:
        service = self.service
        service.reranker(model)
        body = await service.read(request, InferenceRequest)
        if (body.query is None) == (body.queries is None):
            raise ApiError(422, "send the query as query (one string) or as queries (a list), one of them")
        queries = [body.query] if body.query is not None else body.queries
        assert queries is not None
        if len(queries) not in (1, len(body.documents)):
            raise ApiError(
                422,
                f"queries must hold one query for all documents or one per document ({len(body.documents)}), "
                f"got {len(queries)}",
            )
        truncate = service.truncation(None)
        scored = await service.score(request, queries, body.documents, instruction=body.instruction, truncate=truncate)
        return await json_answer({"scores": scored.scores, "input_tokens": scored.tokens})
