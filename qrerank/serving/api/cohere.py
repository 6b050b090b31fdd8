"""Cohere: rerank POST /v1/rerank (v1, also Jina's and vLLM's bodies) and /v2/rerank; embed POST
/v1/embed and /v2/embed.

Documents of v1 are strings or objects of string fields. An object ranks by its `text`, or by the
fields named in `rank_fields`, in that order, written as YAML lines (`Title: ...` one per line, the
form Cohere recommends for structured documents); a field a document lacks is left out. With
`return_documents` an object comes back whole, as Cohere keeps its other fields.

Embed: `input_type` search_query (or query) embeds with the served query instruction
(--default-query-instruction); search_document, classification and clustering embed the text alone.
`embedding_types` float and base64 (little-endian float32); v2's `output_dimension` is the
Matryoshka dimension. `truncate` END cuts over-long inputs as the recipe does, NONE refuses them (413),
START is refused; left out, the server's --auto-truncate decides.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from qrerank.serving.answer import json_answer
from qrerank.serving.api import infinity
from qrerank.serving.api.service import Embedded, Service, base64_vectors, ranking
from qrerank.serving.api.vllm import VllmOptions
from qrerank.serving.errors import ApiError
from qrerank.serving.schemas import NonEmpty, Positive, Schema

TopN = Annotated[int, msgspec.Meta(ge=0)]  # vLLM's 0: every document
Truncate = Literal["NONE", "START", "END"]
EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
InputType = Literal["search_document", "search_query", "query", "classification", "clustering", "image"]


class RerankRequest(VllmOptions, kw_only=True):
    """v1 / Jina / vLLM / Infinity; `raw_scores` is Infinity's, and asks for Infinity's answer."""

    query: str
    documents: Annotated[list[str | Annotated[dict[str, str], NonEmpty]], NonEmpty]  # an object has fields to rank
    model: str | None = None
    top_n: TopN | None = None
    rank_fields: Annotated[list[str], NonEmpty] | None = None
    return_documents: bool = False
    max_chunks_per_doc: Annotated[int, Positive] | None = None
    raw_scores: bool | msgspec.UnsetType = msgspec.UNSET
    instruction: str | None = None  # qrerank's: the Qwen3 task instruction


class RerankV2Request(VllmOptions, kw_only=True):
    query: str
    documents: Annotated[list[str], NonEmpty]
    model: str | None = None
    top_n: TopN | None = None
    max_tokens_per_doc: Annotated[int, Positive] | None = None
    instruction: str | None = None


class EmbedContent(Schema):
    type: Literal["text"]  # images are not served
    text: str


class EmbedInput(Schema):
    content: Annotated[list[EmbedContent], NonEmpty]


class EmbedRequest(Schema):
    texts: Annotated[list[str], NonEmpty] | None = None
    images: list[str] | None = None
    model: str | None = None
    input_type: InputType | None = None
    embedding_types: Annotated[list[EmbeddingType], NonEmpty] | None = None
    truncate: Truncate | None = None
    instruction: str | None = None


class EmbedV2Request(EmbedRequest):
    inputs: Annotated[list[EmbedInput], NonEmpty] | None = None
    output_dimension: Annotated[int, Positive] | None = None
    max_tokens: Annotated[int, Positive] | None = None
    priority: int | None = None  # scheduling only; accepted, unused


def register(router: APIRouter, service: Service) -> None:
    routes = CohereRoutes(service)
    post = ["POST"]
    router.add_api_route("/v1/rerank", routes.rerank, methods=post)
    router.add_api_route("/v2/rerank", routes.rerank_v2, methods=post)
    router.add_api_route("/v1/embed", routes.embed, methods=post)
    router.add_api_route("/v2/embed", routes.embed_v2, methods=post)


class CohereRoutes:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def rerank(self, request: Request) -> Response:
        body = await self.service.read(request, RerankRequest)
        ranked = await rank(self.service, request, body)
        if body.raw_scores is not msgspec.UNSET:  # an Infinity body
            return await json_answer(infinity.answer(ranked, body.documents if body.return_documents else None))
        scores = ranked.scores
        results: list[dict[str, Any]] = [{"index": i, "relevance_score": float(scores[i])} for i in ranked.order]
        if body.return_documents:
            for result in results:
                document = body.documents[result["index"]]
                result["document"] = {"text": document} if isinstance(document, str) else document
        return await json_answer(_answer(ranked.name, results, ranked.tokens, "1"))

    async def rerank_v2(self, request: Request) -> Response:
        service = self.service
        body = await service.read(request, RerankV2Request)
        name = service.reranker(body.model)
        service.check_top_n(body.top_n)
        scored = await service.score(
            request,
            [body.query],
            body.documents,
            instruction=body.instruction,
            raw=body.raw(),
            truncate=service.truncation(body.truncate()),
            max_tokens_per_doc=body.max_tokens_per_doc,
        )
        order = ranking(scored.scores, body.top_n or None)
        results = [{"index": i, "relevance_score": float(scored.scores[i])} for i in order]
        return await json_answer(_answer(name, results, scored.tokens, "2"))

    async def embed(self, request: Request) -> Response:
        body = await self.service.read(request, EmbedRequest)
        texts, embedded = await self._embed(request, body, body.texts, None)
        if body.embedding_types is None:  # v1's plain answer
            answer = {"response_type": "embeddings_floats", "embeddings": embedded.vectors}
        else:
            answer = {"response_type": "embeddings_by_type", "embeddings": _by_type(embedded, body.embedding_types)}
        meta = _meta("1", embedded.tokens)
        return await json_answer({"id": str(uuid.uuid4()), **answer, "texts": texts, "meta": meta})

    async def embed_v2(self, request: Request) -> Response:
        body = await self.service.read(request, EmbedV2Request)
        if (body.texts is None) == (body.inputs is None):
            raise ApiError(422, "send the texts to embed as either texts or inputs")
        texts = body.texts
        if body.inputs is not None:
            for i, item in enumerate(body.inputs):
                if len(item.content) != 1:
                    raise ApiError(422, f"inputs[{i}].content: qrerank embeds one text part per input")
            texts = [item.content[0].text for item in body.inputs]
        max_length = self.service.embed_tokens.max_length if self.service.embed_tokens else 0
        if body.max_tokens is not None and body.max_tokens < max_length:
            raise ApiError(422, f"max_tokens: inputs are cut at the model's limit of {max_length} tokens, not before")
        texts, embedded = await self._embed(request, body, texts, body.output_dimension)
        by_type = _by_type(embedded, body.embedding_types or ["float"])
        answer = {"id": str(uuid.uuid4()), "response_type": "embeddings_by_type", "embeddings": by_type}
        return await json_answer({**answer, "texts": texts, "meta": _meta("2", embedded.tokens)})

    async def _embed(
        self, request: Request, body: EmbedRequest, texts: list[str] | None, dim: int | None
    ) -> tuple[list[str], Embedded]:
        service = self.service
        service.embedder(body.model)
        if body.images or body.input_type == "image":
            raise ApiError(422, "images: this server embeds text only")
        if texts is None:
            raise ApiError(422, "texts: field required")
        for kind in body.embedding_types or ():
            if kind not in ("float", "base64"):
                raise ApiError(422, f"embedding_types: {kind!r} is not served; ask for float or base64")
        instruction = body.instruction
        if instruction is None and body.input_type in ("search_query", "query"):
            instruction = service.options.default_query_instruction
        cut = None if body.truncate is None else body.truncate != "NONE"
        truncate = service.truncation(cut, body.truncate, "truncate")
        embedded = await service.embed(
            request,
            texts,
            instruction=instruction,
            dim=dim,
            truncate=truncate,
            field="texts",
            dim_field="output_dimension",
        )
        return texts, embedded


@dataclass(frozen=True)
class Ranked:
    """A v1-style body scored, for each API's answer."""

    name: str  # the served name answering
    scores: np.ndarray  # [documents]
    order: list[int]  # the documents to answer with, best first (top_n of them)
    tokens: int


async def rank(service: Service, request: Request, body: RerankRequest) -> Ranked:
    name = service.reranker(body.model)
    service.check_top_n(body.top_n)
    docs = [_ranked_text(doc, i, body.rank_fields) for i, doc in enumerate(body.documents)]
    scored = await service.score(
        request,
        [body.query],
        docs,
        instruction=body.instruction,
        raw=body.raw_scores is True or body.raw(),
        truncate=service.truncation(body.truncate()),
        max_chunks_per_doc=body.max_chunks_per_doc,
    )
    return Ranked(name, scored.scores, ranking(scored.scores, body.top_n or None), scored.tokens)


def _ranked_text(document: str | dict[str, str], index: int, rank_fields: list[str] | None) -> str:
    if isinstance(document, str):
        return document
    if rank_fields is None:
        if "text" not in document:
            raise ApiError(422, f"documents[{index}] has no 'text' field; name the fields to rank by in rank_fields")
        return document["text"]
    fields = [field for field in rank_fields if field in document]
    if not fields:
        raise ApiError(422, f"documents[{index}] has none of the rank_fields {rank_fields}")
    return "\n".join(f"{field}: {document[field]}" for field in fields)


def _by_type(embedded: Embedded, types: list[str]) -> dict[str, Any]:
    vectors = embedded.vectors
    return {kind: base64_vectors(vectors) if kind == "base64" else vectors for kind in dict.fromkeys(types)}


def _meta(version: str, tokens: int) -> dict[str, Any]:
    return {"api_version": {"version": version}, "billed_units": {"input_tokens": tokens}}


def _answer(name: str, results: list[dict[str, Any]], tokens: int, version: str) -> dict[str, Any]:
    """Cohere's answer, with Jina's and vLLM's `model` and `usage` beside it."""
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"id": str(uuid.uuid4()), "model": name, "results": results, "usage": usage, "meta": _meta(version, tokens)}
