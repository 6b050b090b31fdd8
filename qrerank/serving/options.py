"""ServerOptions and ConnectionLimits: the served model names and the limits of the HTTP server, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from qrerank.serving.async_engine import DEFAULT_MAX_BATCH_SEQUENCES, DEFAULT_MAX_WAIT_MS
from qrerank.validation import check_bool, check_int, check_optional_str, check_str

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_INPUTS = 1024
DEFAULT_REQUEST_TIMEOUT_S = 60.0
DEFAULT_MAX_CONNECTIONS = 1024


@dataclass(frozen=True)
class ServerOptions:
    """What the server calls its models and what it accepts.

    `reranker_name` / `embedder_name`: the names clients use in `model` fields and URLs (None when
    that model is not served). `api_keys`: when any are given, every route but /health needs
    `Authorization: Bearer <one of them>` (a key is any text a header can carry; clients send it as
    UTF-8). `max_body_bytes`: larger bodies get 413.
    `max_inputs`: documents of a rerank request or inputs of an embedding request (413 beyond).
    `auto_truncate`: cut inputs longer than the engine's max_length as the official recipe does
    (TEI's per-request `truncate` overrides it); otherwise such an input gets 413.
    `request_timeout_s`: a request still unanswered then gets 504 and its queued work is dropped.
    `max_wait_ms`, `max_batch_sequences`: the AsyncEngine's micro-batching (validated there).
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

    def __post_init__(self) -> None:
        check_optional_str(self.reranker_name, "reranker_name")
        check_optional_str(self.embedder_name, "embedder_name")
        for name in (self.reranker_name, self.embedder_name):
            if name is not None and not name.strip():
                raise ValueError(f"served model names must not be blank, got {name!r}")
        if self.reranker_name is not None and self.reranker_name == self.embedder_name:
            raise ValueError(f"the reranker and the embedder are both named {self.reranker_name!r}; name them apart")
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
        timeout = self.request_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"request_timeout_s must be a number, got {type(timeout).__name__}")
        if not timeout > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {timeout}")

    @property
    def served_names(self) -> list[str]:
        return [name for name in (self.reranker_name, self.embedder_name) if name is not None]


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
