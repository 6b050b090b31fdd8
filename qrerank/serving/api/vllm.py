"""vLLM: POST /score and /v1/score (`text_1`, `text_2`), and the fields of vLLM's rerank bodies.

vLLM's /rerank and /v1/rerank bodies are Cohere's (`query`, `documents`, `top_n`, 0 meaning all) with
the pooling options below; cohere.py and tei.py take them through `VllmOptions`.

Pairing, as vLLM's: each of text_1 and text_2 is a string or a list; one text_1 scores against every
text_2 (1:1, 1:N), otherwise the lists pair up one to one (N:N) and must be as long.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Request
from starlette.responses import Response

from qrerank.serving.answer import json_answer
from qrerank.serving.api.service import Service
from qrerank.serving.errors import ApiError
from qrerank.serving.schemas import NonEmpty, Schema


class VllmOptions(Schema):
    """vLLM's pooling options of score and rerank bodies."""

    truncate_prompt_tokens: int | None = None  # -1: cut at the model's limit
    use_activation: bool | None = None  # false: raw logits (vLLM's softmax/sigmoid skipped)
    priority: int | None = None  # scheduling only; accepted, unused
    request_id: str | None = None  # accepted, unused
    user: str | None = None  # accepted, unused

    def raw(self) -> bool:
        return self.use_activation is False

    def truncate(self) -> bool | None:
        """The request's truncation choice, None for the server's."""
        if self.truncate_prompt_tokens is None:
            return None
        if self.truncate_prompt_tokens != -1:
            raise ApiError(
                422,
                f"truncate_prompt_tokens: {self.truncate_prompt_tokens} is not supported; send -1 to cut over-long "
                "inputs at the model's limit as the Qwen3 recipe does",
            )
        return True


Texts = str | Annotated[list[str], NonEmpty]


class ScoreRequest(VllmOptions, kw_only=True):
    text_1: Texts
    text_2: Texts
    model: str | None = None
    instruction: str | None = None  # qrerank's: the Qwen3 task instruction


def register(router: APIRouter, service: Service) -> None:
    routes = VllmRoutes(service)
    for path in ("/score", "/v1/score"):
        router.add_api_route(path, routes.score, methods=["POST"])


class VllmRoutes:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def score(self, request: Request) -> Response:
        service = self.service
        body = await service.read(request, ScoreRequest)
        name = service.reranker(body.model)
        queries = [body.text_1] if isinstance(body.text_1, str) else body.text_1
        docs = [body.text_2] if isinstance(body.text_2, str) else body.text_2
        if len(queries) not in (1, len(docs)):
            raise ApiError(
                422,
                f"text_1 holds {len(queries)} texts and text_2 {len(docs)}: send one text_1 for all of text_2 "
                "(1:N) or as many as text_2 (N:N)",
            )
        truncate = service.truncation(body.truncate())
        scored = await service.score(
            request, queries, docs, instruction=body.instruction, raw=body.raw(), truncate=truncate, field="text_2"
        )
        data = [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(scored.scores)]
        usage = {"prompt_tokens": scored.tokens, "total_tokens": scored.tokens, "completion_tokens": 0}
        answer = {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": name}
        return await json_answer({**answer, "data": data, "usage": usage})
