"""text-embeddings-inference: POST /embed, /rerank, / (routed by body shape), /tokenize; GET /info.

`POST /` embeds a body with `inputs` and reranks one with `query` + `texts`, as TEI serves its one
model there (huggingface_hub's InferenceClient posts to the bare URL). /rerank also takes
Cohere/Infinity/vLLM bodies (`documents`) and answers those in Infinity's shape (infinity.py).
`truncation_direction` Right (the recipe's cut) is served, Left refused; `prompt_name` selects a
served prompt (sentence-transformers prompts and --prompt). When both models are served, /info and
/tokenize describe the embedder.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from starlette.responses import Response

import qrerank
from qrerank.serving.answer import json_answer
from qrerank.serving.api import cohere, infinity
from qrerank.serving.api.service import Service, ranking
from qrerank.serving.schemas import NonEmpty, Positive, Schema

Direction = Literal["Right", "Left", "right", "left"]  # TEI's spelling, and huggingface_hub's
Texts = str | Annotated[list[str], NonEmpty]


class EmbedRequest(Schema):
    inputs: Texts
    normalize: bool = True
    dimensions: Annotated[int, Positive] | None = None
    truncate: bool | None = None  # None: the server's --auto-truncate
    truncation_direction: Direction | None = None
    prompt_name: str | None = None
    instruction: str | None = None  # qrerank's: the Qwen3 query instruction


class RerankRequest(Schema):
    query: str
    texts: Annotated[list[str], NonEmpty]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: Direction | None = None
    top_n: Annotated[int, Positive] | None = None  # litellm's huggingface/ rerank sends it
    instruction: str | None = None  # qrerank's: the Qwen3 task instruction


class TokenizeRequest(Schema):
    inputs: Texts
    add_special_tokens: bool = True
    prompt_name: str | None = None


def register(router: APIRouter, service: Service) -> None:
    routes = TeiRoutes(service)
    post = ["POST"]
    router.add_api_route("/", routes.root, methods=post)
    router.add_api_route("/embed", routes.embed, methods=post)
    router.add_api_route("/rerank", routes.rerank, methods=post)
    router.add_api_route("/tokenize", routes.tokenize, methods=post)
    router.add_api_route("/info", routes.info, methods=["GET"])


class TeiRoutes:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def root(self, request: Request) -> Response:
        body = await self.service.read_by_shape(request, {"inputs": EmbedRequest, "texts": RerankRequest})
        return await (self._embed(request, body) if isinstance(body, EmbedRequest) else self._rerank(request, body))  # type: ignore[arg-type]

    async def embed(self, request: Request) -> Response:
        return await self._embed(request, await self.service.read(request, EmbedRequest))

    async def rerank(self, request: Request) -> Response:
        body = await self.service.read_by_shape(request, {"texts": RerankRequest, "documents": cohere.RerankRequest})
        if isinstance(body, RerankRequest):
            return await self._rerank(request, body)
        assert isinstance(body, cohere.RerankRequest)
        ranked = await cohere.rank(self.service, request, body)
        return await json_answer(infinity.answer(ranked, body.documents if body.return_documents else None))

    async def _embed(self, request: Request, body: EmbedRequest) -> Response:
        service = self.service
        service.embedder(None)
        embedded = await service.embed(
            request,
            [body.inputs] if isinstance(body.inputs, str) else body.inputs,
            instruction=body.instruction,
            prompt=service.prompt(body.prompt_name),
            dim=body.dimensions,
            normalize=body.normalize,
            truncate=service.truncation(body.truncate, body.truncation_direction),
            field="inputs",
        )
        return await json_answer(embedded.vectors)

    async def _rerank(self, request: Request, body: RerankRequest) -> Response:
        service = self.service
        service.reranker(None)
        scored = await service.score(
            request,
            [body.query],
            body.texts,
            instruction=body.instruction,
            raw=body.raw_scores,
            truncate=service.truncation(body.truncate, body.truncation_direction),
            field="texts",
        )
        results: list[dict[str, Any]] = [
            {"index": i, "score": float(scored.scores[i])} for i in ranking(scored.scores, body.top_n)
        ]
        if body.return_text:
            for result in results:
                result["text"] = body.texts[result["index"]]
        return await json_answer(results)

    async def tokenize(self, request: Request) -> Response:
        """Each input's tokens as the served model runs them: with add_special_tokens, the embedder's
        `<|endoftext|>`; `start`/`stop` are character offsets into the input (the prompt included)."""
        service = self.service
        body = await service.read(request, TokenizeRequest)
        model = service.engine.embedder or service.engine.reranker
        assert model is not None
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        service.check_count(len(texts), "inputs")
        prompt = service.prompt(body.prompt_name) or ""
        texts = [prompt + text for text in texts]
        tokenizer = model.prompt.tokenizer
        eos = service.engine.embedder.prompt.eos_id if service.engine.embedder is not None else None
        answer = []
        for text, encoding in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False), strict=True):
            tokens: list[dict[str, Any]] = [
                {"id": i, "text": text[start:stop], "special": False, "start": start, "stop": stop}
                for i, (start, stop) in zip(encoding.ids, encoding.offsets, strict=True)
            ]
            if body.add_special_tokens and eos is not None:
                special = {"id": eos, "text": tokenizer.id_to_token(eos), "special": True, "start": None, "stop": None}
                tokens.append(special)
            answer.append(tokens)
        return await json_answer(answer)

    async def info(self) -> dict[str, Any]:
        service, options = self.service, self.service.options
        embedder = service.engine.embedder
        model = embedder or service.engine.reranker
        assert model is not None
        if embedder is not None:
            name, kind = options.embedder_name, {"embedding": {"pooling": "last_token"}}
        else:
            name, kind = options.reranker_name, {"reranker": {"id2label": {"0": "yes"}}}
        engine = model.engine.options
        return {
            "model_id": name,
            "model_sha": None,
            "model_dtype": str(engine.dtype).removeprefix("torch."),
            "model_type": kind,
            "max_input_length": engine.max_length,
            "max_batch_tokens": engine.max_batch_tokens,
            "max_batch_requests": options.max_batch_sequences,
            "max_client_batch_size": options.max_inputs,
            "auto_truncate": options.auto_truncate,
            "version": qrerank.__version__,
        }
