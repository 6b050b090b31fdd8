"""Request schemas of the APIs clients already speak (OpenAI, Cohere/Jina, DeepInfra, text-embeddings-inference).

msgspec Structs, decoded straight from the body bytes: no intermediate Python objects are built for
a body that fails, and decoding stops at its first error, so a flood of wrongly typed items costs
microseconds, not an object per item. Strict: no type coercion ("5" is not 5, 1 is not true) and
unknown fields are refused by name, so a client never gets results computed without an option it
asked for. `instruction` is qrerank's one addition to each: the Qwen3 task instruction (reranker) or
the query instruction (embeddings). Limits that depend on the server (input counts, top_n,
dimensions) are checked by the routes.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

NonEmpty = msgspec.Meta(min_length=1)
Positive = msgspec.Meta(ge=1)


class Schema(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every request body."""


class OpenAIEmbeddingsRequest(Schema):
    """POST /v1/embeddings and /v1/openai/embeddings (base64 is little-endian float32, as OpenAI's)."""

    input: str | Annotated[list[str], NonEmpty]
    model: str | None = None
    dimensions: Annotated[int, Positive] | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None  # OpenAI's end-user id for abuse monitoring; accepted, unused
    instruction: str | None = None


class RerankDocument(Schema):
    text: str


class RerankRequest(Schema):
    """POST /v1/rerank, Cohere/Jina style: `documents` as strings or {"text": ...}."""

    query: str
    documents: Annotated[list[str | RerankDocument], NonEmpty]
    model: str | None = None
    top_n: Annotated[int, Positive] | None = None
    return_documents: bool = False
    instruction: str | None = None


class InferenceRequest(Schema):
    """POST /v1/inference/{model}, DeepInfra style: one query for all documents, or one per document."""

    queries: Annotated[list[str], NonEmpty]
    documents: Annotated[list[str], NonEmpty]
    instruction: str | None = None


class TeiEmbedRequest(Schema):
    """POST /embed, text-embeddings-inference style; `truncate` None means the server's default."""

    inputs: str | Annotated[list[str], NonEmpty]
    normalize: bool = True
    dimensions: Annotated[int, Positive] | None = None
    truncate: bool | None = None
    instruction: str | None = None


class TeiRerankRequest(Schema):
    """POST /rerank, text-embeddings-inference style: answers a list sorted by score."""

    query: str
    texts: Annotated[list[str], NonEmpty]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    instruction: str | None = None
