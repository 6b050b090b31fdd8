"""ServerOptions: the served model names and the limits of the HTTP server, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from qrerank.serving.async_engine import DEFAULT_MAX_BATCH_SEQUENCES, DEFAULT_MAX_WAIT_MS
from qrerank.validation import check_bool, check_int, check_optional_str, check_str

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_INPUTS = 1024
DEFAULT_REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServerOptions:
    """What the server calls its models and what it accepts.

    `reranker_name` / `embedder_name`: the names clients use in `model` fields and URLs (None when
    that model is not served). `api_key`: when set, every route but /health needs
    `Authorization: Bearer <api_key>`. `max_body_bytes`: larger bodies get 413.
    `max_inputs`: documents of a rerank request or inputs of an embedding request (413 beyond).
    `auto_truncate`: cut inputs longer than the engine's max_length as the official recipe does
    (TEI's per-request `truncate` overrides it); otherwise such an input gets 413.
    `request_timeout_s`: a request still unanswered then gets 504 and its queued work is dropped.
    `max_wait_ms`, `max_batch_sequences`: the AsyncEngine's micro-batching (validated there).
    """

    reranker_name: str | None = None
    embedder_name: str | None = None
    api_key: str | None = None
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
        if self.api_key is not None and not check_str(self.api_key, "api_key"):
            raise ValueError("api_key must not be empty (leave it unset to serve without a key)")
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
