"""OpenAI embeddings: POST /v1/embeddings, under DeepInfra's prefix /v1/openai/embeddings, and as
Infinity's /embeddings; GET /v1/models.

`input` is a text, a list of texts, one text as token ids (a list of ints) or several (a list of
lists of ints), as OpenAI's spec allows; token ids are Qwen3 ids, checked against the vocabulary,
and `<|endoftext|>` is appended as for text. base64 is little-endian float32, as OpenAI's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from starlette.responses import Response

from qrerank.serving.answer import json_answer
from qrerank.serving.api.service import Service, base64_vectors
from qrerank.serving.errors import ApiError
from qrerank.serving.schemas import NonEmpty, Positive, Schema, TokenId

TokenIds = Annotated[list[TokenId], NonEmpty]


class EmbeddingsRequest(Schema):
    input: str | Annotated[list[str | TokenId | TokenIds], NonEmpty]
    model: str | None = None
    dimensions: Annotated[int, Positive] | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None  # OpenAI's end-user id for abuse monitoring; accepted, unused
    modality: Literal["text"] | None = None  # Infinity's; text is the only one served
    instruction: str | None = None  # qrerank's: the Qwen3 query instruction


def register(router: APIRouter, service: Service) -> None:
    routes = OpenAIRoutes(service)
    for path in ("/v1/embeddings", "/v1/openai/embeddings", "/embeddings"):
        router.add_api_route(path, routes.embeddings, methods=["POST"])
    router.add_api_route("/v1/models", routes.models, methods=["GET"])


class OpenAIRoutes:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def models(self) -> dict[str, Any]:
        options, created = self.service.options, self.service.created
        served = [(name, "rerank") for name in options.reranker_names]
        served += [(name, "embed") for name in options.embedder_names]
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "qrerank", "task": task}
            for name, task in served
        ]
        return {"object": "list", "data": data}

    async def embeddings(self, request: Request) -> Response:
        service = self.service
        body = await service.read(request, EmbeddingsRequest)
        name = service.embedder(body.model)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        truncate = service.truncation(None)  # OpenAI has no per-request choice: the server's --auto-truncate
        if all(isinstance(item, str) for item in inputs):
            embedded = await service.embed(
                request,
                inputs,  # type: ignore[arg-type]
                instruction=body.instruction,
                dim=body.dimensions,
                truncate=truncate,
            )
        else:
            if body.instruction is not None:
                raise ApiError(422, "instruction: token-id input is embedded as given; send text to add an instruction")
            if all(isinstance(item, int) for item in inputs):
                sequences = [inputs]
            elif all(isinstance(item, list) for item in inputs):
                sequences = inputs
            else:
                raise ApiError(422, "input: a list of texts, of token ids, or of token-id lists, not a mix of them")
            embedded = await service.embed_token_ids(request, sequences, dim=body.dimensions, truncate=truncate)  # type: ignore[arg-type]
        vectors = embedded.vectors
        encoded = base64_vectors(vectors) if body.encoding_format == "base64" else list(vectors)
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
        usage = {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens}
        return await json_answer({"object": "list", "data": data, "model": name, "usage": usage})
