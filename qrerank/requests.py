"""Score and embed requests: the validated unit of work that `score_batch` / `embed_batch` run together.

The direct calls (`Reranker.score`, `Embedder.embed`) build one request; a server merging concurrent
callers builds one per caller, so one caller's bad input fails at construction, before any batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qrerank.validation import check_bool, check_int, check_optional_str, check_str, check_str_list


@dataclass(frozen=True)
class ScoreRequest:
    """Relevance of each of `docs` to `query` (one reranker group: they share a prompt prefix)."""

    query: str
    docs: Sequence[str]
    instruction: str | None = None

    def __post_init__(self) -> None:
        check_str(self.query, "query")
        object.__setattr__(self, "docs", tuple(check_str_list(self.docs, "docs")))
        check_optional_str(self.instruction, "instruction")


@dataclass(frozen=True)
class EmbedRequest:
    """Embeddings of `texts`; `dim` (Matryoshka prefix) is checked against the model when it runs.

    `prompt`: a raw text prefix of every text (a sentence-transformers prompt), instead of an `instruction`.
    """

    texts: Sequence[str]
    instruction: str | None = None
    dim: int | None = None
    normalize: bool = True
    prompt: str | None = None

    def __post_init__(self) -> None:
        texts = [self.texts] if isinstance(self.texts, str) else check_str_list(self.texts, "texts")
        object.__setattr__(self, "texts", tuple(texts))
        check_optional_str(self.instruction, "instruction")
        if self.dim is not None:
            check_int(self.dim, "dim", None)  # the type here; the range once the model's width is known
        check_bool(self.normalize, "normalize")
        if check_optional_str(self.prompt, "prompt") is not None and self.instruction is not None:
            raise ValueError("give an instruction or a prompt, not both")
