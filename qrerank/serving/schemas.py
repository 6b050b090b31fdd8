"""Request schemas of the APIs clients already speak (OpenAI, Cohere/Jina, DeepInfra, text-embeddings-inference).

Strict: no type coercion ("5" is not 5, 1 is not true) and unknown fields are refused by name, so a
client never gets results computed without an option it asked for. `instruction` is qrerank's one
addition to each: the Qwen3 task instruction (reranker) or the query instruction (embeddings).
Limits that depend on the server (input counts, top_n, dimensions) are checked by the routes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Schema(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class OpenAIEmbeddingsRequest(_Schema):
    """POST /v1/embeddings and /v1/openai/embeddings (base64 is little-endian float32, as OpenAI's)."""

    input: str | list[str] = Field(min_length=1)
    model: str | None = None
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None  # OpenAI's end-user id for abuse monitoring; accepted, unused
    instruction: str | None = None


class RerankDocument(_Schema):
    text: str


class RerankRequest(_Schema):
    """POST /v1/rerank, Cohere/Jina style: `documents` as strings or {"text": ...}."""

    query: str
    documents: list[str | RerankDocument] = Field(min_length=1)
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    instruction: str | None = None


class InferenceRequest(_Schema):
    """POST /v1/inference/{model}, DeepInfra style: one query for all documents, or one per document."""

    queries: list[str] = Field(min_length=1)
    documents: list[str] = Field(min_length=1)
    instruction: str | None = None


class TeiEmbedRequest(_Schema):
    """POST /embed, text-embeddings-inference style; `truncate` None means the server's default."""

    inputs: str | list[str] = Field(min_length=1)
    normalize: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    truncate: bool | None = None
    instruction: str | None = None


class TeiRerankRequest(_Schema):
    """POST /rerank, text-embeddings-inference style: answers a list sorted by score."""

    query: str
    texts: list[str] = Field(min_length=1)
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    instruction: str | None = None
