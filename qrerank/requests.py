"""Score and embed requests: the validated unit of work that `score_batch` / `embed_batch` run together.

The direct calls (`Reranker.score`, `Embedder.embed`) build one request; a server merging concurrent
callers builds one per caller, so one caller's bad input fails at construction, before any batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qrerank.validation import check_bool, check_int, check_optional_str, check_str, check_str_list


@dataclass(frozen=True)
class ScoreRequest:
    """Relevance of each of `docs` to `query` (one reranker group: they share a prompt prefix).

    `max_tokens_per_doc`: each document's own tokens are cut to that many before the template (Cohere
    v2). `max_chunks_per_doc`: a document too long for the model is scored in up to that many
    consecutive windows of its tokens, each with the whole template, and gets the best window's
    score (Cohere); None: the official recipe's truncation.
    """

    query: str
    docs: Sequence[str]
    instruction: str | None = None
    max_chunks_per_doc: int | None = None
    max_tokens_per_doc: int | None = None

    def __post_init__(self) -> None:
        check_str(self.query, "query")
        object.__setattr__(self, "docs", tuple(check_str_list(self.docs, "docs")))
        check_optional_str(self.instruction, "instruction")
        if self.max_chunks_per_doc is not None:
            check_int(self.max_chunks_per_doc, "max_chunks_per_doc", 1)
        if self.max_tokens_per_doc is not None:
            check_int(self.max_tokens_per_doc, "max_tokens_per_doc", 1)


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
        texts = [check_str(self.texts, "texts")] if isinstance(self.texts, str) else check_str_list(self.texts, "texts")
        object.__setattr__(self, "texts", tuple(texts))
        check_optional_str(self.instruction, "instruction")
        if self.dim is not None:
            check_int(self.dim, "dim", None)  # the type here; the range once the model's width is known
        check_bool(self.normalize, "normalize")
        if check_optional_str(self.prompt, "prompt") is not None and self.instruction is not None:
            raise ValueError("give an instruction or a prompt, not both")


@dataclass(frozen=True)
class Tokenized:
    """A request's token id sequences exactly as the engine runs them.

    Usually one sequence per item (document or text). An item may also be run as several sequences in
    a row (a long document scored in windows); `owners` then gives each sequence's item, and an item's
    result is the maximum over its sequences. Schedulers slice a request by items, never inside one.
    """

    ids: Sequence[Sequence[int]]  # [S] sequences of token ids
    owners: np.ndarray | None = None  # [S] int64, 0, then steps of 0 or 1: each sequence's item; None: i is item i

    def __post_init__(self) -> None:
        if self.owners is not None:
            owners = np.asarray(self.owners)
            steps = np.diff(owners)
            if (
                owners.ndim != 1
                or len(owners) != len(self.ids)
                or (len(owners) and owners[0] != 0)
                or not np.isin(steps, (0, 1)).all()
            ):
                raise ValueError(
                    f"owners must give each of the {len(self.ids)} sequences its item, starting at 0 and "
                    "increasing by 0 or 1, got " + np.array2string(owners[:20], separator=", ")
                )
            object.__setattr__(self, "owners", owners.astype(np.int64, copy=False))

    @property
    def items(self) -> int:
        if self.owners is None:
            return len(self.ids)
        return int(self.owners[-1]) + 1 if len(self.owners) else 0

    @property
    def tokens(self) -> int:
        return sum(map(len, self.ids))

    def sequence_range(self, start: int, end: int) -> tuple[int, int]:
        """The sequences of items start:end."""
        if self.owners is None:
            return start, end
        first, last = np.searchsorted(self.owners, (start, end))
        return int(first), int(last)

    def slice(self, start: int, end: int) -> Tokenized:
        """Items start:end, with all their sequences."""
        first, last = self.sequence_range(start, end)
        owners = None if self.owners is None else self.owners[first:last] - start
        return Tokenized(self.ids[first:last], owners)

    def per_item_max(self, values: torch.Tensor) -> torch.Tensor:
        """[S] values of the sequences -> [items] the maximum over each item's sequences."""
        if self.owners is None:
            return values
        owners = torch.from_numpy(self.owners).to(values.device)
        out = torch.empty(self.items, dtype=values.dtype, device=values.device)
        return out.scatter_reduce_(0, owners, values, "amax", include_self=False)
