"""ServerOptions and ConnectionLimits: the served model names and the limits of the HTTP server, validated once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from qrerank.prompts import DEFAULT_RERANK_INSTRUCTION
from qrerank.serving.async_engine import DEFAULT_MAX_BATCH_SEQUENCES, DEFAULT_MAX_WAIT_MS
from qrerank.validation import check_bool, check_int, check_optional_str, check_str

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_INPUTS = 1024
DEFAULT_REQUEST_TIMEOUT_S = 60.0
DEFAULT_MAX_CONNECTIONS = 1024
# The web-search task of the Qwen3-Embedding recipe: the instruction of queries that name no other
DEFAULT_QUERY_INSTRUCTION = DEFAULT_RERANK_INSTRUCTION


@dataclass(frozen=True)
class ServerOptions:
    """What the server calls its models and what it accepts.

    `reranker_name` / `embedder_name`: the names clients use in `model` fields and URLs (None when
    that model is not served); `reranker_aliases` / `embedder_aliases`: further names of the same
    model. `accept_any_model_name`: a name served by no model is answered by the one model of the kind
    the route needs (for clients that hard-code a name) instead of 404. `api_keys`: when any are given,
    every route but /health needs `Authorization: Bearer <one of them>` (a key is any text a header can
    carry; clients send it as UTF-8). `max_body_bytes`: larger bodies get 413.
    `max_inputs`: documents of a rerank request or inputs of an embedding request (413 beyond).
    `auto_truncate`: cut inputs longer than the engine's max_length as the official recipe does
    (a request's own `truncate` overrides it); otherwise such an input gets 413.
    `request_timeout_s`: a request still unanswered then gets 504 and its queued work is dropped.
    `max_wait_ms`, `max_batch_sequences`: the AsyncEngine's micro-batching (validated there).
    `strict_fields`: refuse (422) body fields that no peer API of the route documents; by default they
    are ignored, as text-embeddings-inference and OpenAI do. `prompts`: named text prefixes that
    `prompt_name` selects (sentence-transformers prompts). `default_query_instruction`: the Qwen3
    instruction of embedding queries marked only by their kind (Cohere `input_type: search_query`).
    """

    reranker_name: str | None = None
    embedder_name: str | None = None
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inputs: int = DEFAULT_MAX_INPUTS
    auto_truncate: bool = False
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_batch_sequences: int = DEFAULT_MAX_BATCH_SEQUENCES
    reranker_aliases: tuple[str, ...] = ()
    embedder_aliases: tuple[str, ...] = ()
    accept_any_model_name: bool = False
    strict_fields: bool = False
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_query_instruction: str = DEFAULT_QUERY_INSTRUCTION

    def __post_init__(self) -> None:
        check_optional_str(self.reranker_name, "reranker_name")
        check_optional_str(self.embedder_name, "embedder_name")
        for role in ("reranker", "embedder"):
            aliases = getattr(self, f"{role}_aliases")
            if not isinstance(aliases, tuple):
                raise TypeError(f"{role}_aliases must be a tuple of str, got {type(aliases).__name__}")
            for i, alias in enumerate(aliases):
                check_str(alias, f"{role}_aliases[{i}]")
            if aliases and getattr(self, f"{role}_name") is None:
                raise ValueError(f"{role}_aliases are given but no {role}_name: aliases name a served model")
        names = self.served_names
        for name in names:
            if not name.strip():
                raise ValueError(f"served model names must not be blank, got {name!r}")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"the served models are both named {repeated[0]!r}; give each name to one model once")
        if isinstance(self.api_keys, str) or not isinstance(self.api_keys, (tuple, list)):
            raise TypeError(f"api_keys must be a tuple of strings, got {type(self.api_keys).__name__}")
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        for i, key in enumerate(self.api_keys):  # never shown: a key is a secret
            check_str(key, f"api_keys[{i}]")
            if not key or key != key.strip(" \t") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
                raise ValueError(
                    f"api_keys[{i}] is empty, or starts or ends with whitespace, or holds control characters: "
                    "no client could send it in an Authorization header"
                )
        check_int(self.max_body_bytes, "max_body_bytes", 1)
        check_int(self.max_inputs, "max_inputs", 1)
        check_bool(self.auto_truncate, "auto_truncate")
        check_bool(self.accept_any_model_name, "accept_any_model_name")
        check_bool(self.strict_fields, "strict_fields")
        timeout = self.request_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"request_timeout_s must be a number, got {type(timeout).__name__}")
        if not timeout > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {timeout}")
        if not isinstance(self.prompts, Mapping):
            raise TypeError(f"prompts must be a mapping of name to text, got {type(self.prompts).__name__}")
        for name, text in self.prompts.items():
            if not check_str(name, "prompts names").strip():
                raise ValueError(f"prompt names must not be blank, got {name!r}")
            check_str(text, f"prompts[{name!r}]")
        object.__setattr__(self, "prompts", MappingProxyType(dict(self.prompts)))
        check_str(self.default_query_instruction, "default_query_instruction")

    @property
    def reranker_names(self) -> tuple[str, ...]:
        return () if self.reranker_name is None else (self.reranker_name, *self.reranker_aliases)

    @property
    def embedder_names(self) -> tuple[str, ...]:
        return () if self.embedder_name is None else (self.embedder_name, *self.embedder_aliases)

    @property
    def served_names(self) -> list[str]:
        return [*self.reranker_names, *self.embedder_names]


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections the server holds, and how long each may take to send a request (connections.py).

    `idle_timeout_s`: a connection without a request in progress, from connect or from its last answer.
    `header_timeout_s`: from a request's first byte to the end of its headers (at most
    `max_header_bytes`). `body_timeout_s`: from the end of its headers to the end of its body.
    """

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        check_int(self.max_connections, "max_connections", 1)
        check_int(self.max_header_bytes, "max_header_bytes", 1024)
        for name in ("idle_timeout_s", "header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be > 0 and finite, got {value}")
