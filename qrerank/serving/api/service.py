"""What every API family shares: bodies, model names, limits, prompts, and the one way to the engine.

A route handler decodes its body (`Service.read`), resolves the model name (`reranker` /
`embedder`: 404 for a name not served), turns the peer API's fields into qrerank's (`truncation`,
`prompt`), hands the inputs to `embed` / `score`, and shapes the answer. `embed` and `score` are the
only callers of the token counter and the engine: they check the input count (413), make the engine
requests and count their recipe tokens in one call on a worker thread (prepare.py: the per-input
limit, 413), await the engine while the client waits, under the request timeout (lifecycle.py: 504;
a client gone cancels the work), and count the prompt tokens for `usage` and the metrics.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
from fastapi import Request

from qrerank.serving.async_engine import AsyncEngine
from qrerank.serving.body import decode, read_body, read_request
from qrerank.serving.errors import ApiError
from qrerank.serving.lifecycle import all_of, while_connected
from qrerank.serving.list_bound import ListBound, raw_fields
from qrerank.serving.metrics import ServingMetrics
from qrerank.serving.options import ServerOptions
from qrerank.serving.prepare import EmbedWork, embed_work, score_work, token_ids_work
from qrerank.serving.schemas import S, Schema, strict_variant
from qrerank.serving.tokens import TokenCounter

T = TypeVar("T")


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # [n, dim] float32
    tokens: int  # the request's prompt tokens


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray  # [documents] float32, in the documents' order
    tokens: int


R = TypeVar("R", Embedded, Scored)


class Service:
    """One engine with its served names, limits, prompts and metrics, as every route uses them."""

    def __init__(self, engine: AsyncEngine, options: ServerOptions, metrics: ServingMetrics) -> None:
        self.engine = engine
        self.options = options
        self.metrics = metrics
        self.rerank_tokens = TokenCounter(engine.reranker) if engine.reranker is not None else None
        self.embed_tokens = TokenCounter(engine.embedder) if engine.embedder is not None else None
        # The prompts `prompt_name` selects: the checkpoint's sentence-transformers prompts, overlaid by --prompt.
        checkpoint_prompts = engine.embedder.prompts if engine.embedder is not None else {}
        self.prompts: dict[str, str] = {**checkpoint_prompts, **options.prompts}
        self.created = int(time.time())
        # No list in a body is decoded past what some route could take: an input count, or one input's token ids
        lengths = [model.engine.options.max_length for model in (engine.reranker, engine.embedder) if model is not None]
        self.max_list_items = max(options.max_inputs, *lengths)

    async def read(self, request: Request, schema: type[S]) -> S:
        """The body decoded into `schema` (its strict variant under --strict-fields); 400/413/422 otherwise."""
        return await read_request(request, self._variant(schema), self.options.max_body_bytes, self.max_list_items)

    async def read_by_shape(self, request: Request, schemas: Mapping[str, type[Schema]]) -> Schema:
        """The body decoded into the schema of the first field of `schemas` it has: one route, several bodies."""
        # Whatever else it holds, a body with the first field is read as the first schema: that field's list
        # can be bounded as the body streams in.
        first, first_schema = next(iter(schemas.items()))
        bound = ListBound.of(self._variant(first_schema), self.max_list_items, names=(first,))
        raw = await read_body(request, self.options.max_body_bytes, bound)
        fields = await asyncio.to_thread(raw_fields, raw, tuple(schemas))
        if fields is None:  # empty, not JSON or not an object: any of the schemas names the error (400/422)
            await asyncio.to_thread(decode, self._variant(first_schema), raw)
            raise ApiError(422, "the body is not a JSON object")
        for field, schema in schemas.items():
            if field in fields:
                return await asyncio.to_thread(decode, self._variant(schema), raw, self.max_list_items)
        raise ApiError(422, f"the body has none of the fields {', '.join(map(repr, schemas))}, so it fits no API here")

    def _variant(self, schema: type[S]) -> type[S]:
        return strict_variant(schema) if self.options.strict_fields else schema

    def reranker(self, requested: str | None) -> str:
        """The served name answering a request for `requested` (None: the request names no model)."""
        return self._resolve(requested, self.options.reranker_names, "reranker")

    def embedder(self, requested: str | None) -> str:
        return self._resolve(requested, self.options.embedder_names, "embedding model")

    def _resolve(self, requested: str | None, names: tuple[str, ...], role: str) -> str:
        served = ", ".join(repr(n) for n in self.options.served_names)
        if not names:
            raise ApiError(404, f"this server serves no {role}; served models: {served}")
        if requested is None or (self.options.accept_any_model_name and requested not in names):
            return names[0]
        if requested not in names:
            raise ApiError(404, f"the {role} {requested!r} is not served here; served models: {served}")
        return requested

    def check_count(self, count: int, field: str) -> None:
        if count > self.options.max_inputs:
            raise ApiError(413, f"{field} holds {count} items; this server accepts at most {self.options.max_inputs}")

    def check_top_n(self, top_n: int | None, field: str = "top_n") -> None:
        if top_n is not None and top_n > self.options.max_inputs:
            raise ApiError(422, f"{field} must be between 1 and {self.options.max_inputs}, got {top_n}")

    def truncation(
        self, truncate: bool | None, direction: str | None = None, field: str = "truncation_direction"
    ) -> bool:
        """Whether to cut over-long inputs: the request's choice, else the server's (--auto-truncate).

        Inputs are cut as the Qwen3 recipes cut them, keeping their start; a request asking to cut
        their start instead (TEI's Left, Cohere's START) is refused rather than answered otherwise.
        """
        cut = self.options.auto_truncate if truncate is None else truncate
        if cut and direction is not None and direction.lower() in ("left", "start"):
            raise ApiError(
                422,
                f"{field}: {direction!r} is not supported; qrerank cuts the end of an over-long input, as the "
                "Qwen3 recipe does (send Right/END, or leave it out)",
            )
        return cut

    def prompt(self, name: str | None, field: str = "prompt_name") -> str | None:
        """The text of the served prompt `name` (sentence-transformers prompts and --prompt)."""
        if name is None:
            return None
        if name not in self.prompts:
            served = ", ".join(repr(n) for n in self.prompts) or "none"
            raise ApiError(422, f"{field}: no prompt named {name!r} is served; served prompts: {served}")
        return self.prompts[name]

    async def embed(
        self,
        request: Request,
        texts: Sequence[str],
        *,
        instruction: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        normalize: bool = True,
        truncate: bool = False,
        field: str = "input",
        dim_field: str = "dimensions",
    ) -> Embedded:
        """Embeddings of `texts`; `prompt` is a text prefix (a sentence-transformers prompt), `instruction`
        the Qwen3 query instruction: one or the other."""
        embedder, counter = self.engine.embedder, self.embed_tokens
        assert embedder is not None and counter is not None
        self.check_count(len(texts), field)
        if prompt is not None and instruction is not None:
            raise ApiError(422, "a prompt (prompt_name) and an instruction were both given; the model takes one")
        options = dict(instruction=instruction, prompt=prompt, dim=dim, normalize=normalize, truncate=truncate)
        return await self._embedded(
            request, partial(embed_work, counter, embedder, texts, **options, field=field, dim_field=dim_field)
        )

    async def embed_token_ids(
        self,
        request: Request,
        sequences: Sequence[Sequence[int]],
        *,
        dim: int | None,
        truncate: bool,
        field: str = "input",
    ) -> Embedded:
        """Embeddings of texts given as token ids (OpenAI's list-of-ints input): each sequence is the text's
        ids, checked against the vocabulary, cut as a text would be, then `<|endoftext|>` as for text."""
        embedder = self.engine.embedder
        assert embedder is not None
        self.check_count(len(sequences), field)
        return await self._embedded(request, partial(token_ids_work, embedder, sequences, dim, truncate, field))

    async def _embedded(self, request: Request, prepare: Callable[[], EmbedWork]) -> Embedded:
        """Run `prepare` on a worker thread, then its request on the engine, within the request's lifetime."""

        async def run() -> Embedded:
            prepared = await asyncio.to_thread(prepare)
            vectors = await self.engine.submit(prepared.request, tokenized=prepared.tokenized)
            return Embedded(vectors, prepared.tokens)

        return self._counted(await self._within_timeout(request, run()), self.options.embedder_name)

    async def score(
        self,
        request: Request,
        queries: Sequence[str],
        docs: Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        truncate: bool = False,
        field: str = "documents",
        max_chunks_per_doc: int | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Scored:
        """Scores of `docs` against one query for all, or one query per document.

        `max_chunks_per_doc` / `max_tokens_per_doc`: Cohere's long-document options (a document cut into
        up to that many windows, its score their maximum; each document cut to that many tokens).
        """
        counter = self.rerank_tokens
        assert counter is not None
        self.check_count(len(docs), field)
        long_documents = dict(max_chunks_per_doc=max_chunks_per_doc, max_tokens_per_doc=max_tokens_per_doc)

        async def run() -> Scored:
            work = await asyncio.to_thread(
                score_work, counter, queries, docs, instruction, truncate, field, **long_documents
            )
            parts = await all_of(self.engine.submit(r, raw=raw, tokenized=t) for r, t in work.requests)
            return Scored(work.scores(parts), work.tokens)

        return self._counted(await self._within_timeout(request, run()), self.options.reranker_name)

    def _counted(self, result: R, model: str | None) -> R:
        self.metrics.tokens.labels(model).inc(result.tokens)
        return result

    async def _within_timeout(self, request: Request, work: Awaitable[T]) -> T:
        """`work` cancelled (its queued engine work dropped) when the client leaves or the timeout passes (504)."""
        return await while_connected(request, work, self.options.request_timeout_s)


def ranking(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    """Document indices best first (ties keep the documents' order), the first `top_n` of them."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:top_n]]


def base64_vectors(vectors: np.ndarray) -> list[str]:
    """Each vector's little-endian float32 bytes in base64, as OpenAI and Cohere send them."""
    return [base64.b64encode(v.astype("<f4", copy=False).tobytes()).decode() for v in vectors]
