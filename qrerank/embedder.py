"""Embedder: Qwen3-Embedding vectors by last-token pooling, with Matryoshka truncation and L2 normalisation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qrerank.checkpoint import Checkpoint
from qrerank.engine import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_LENGTH, Engine, EngineOptions
from qrerank.prompts import EmbeddingPrompt
from qrerank.requests import EmbedRequest
from qrerank.validation import check_bool, check_int

MIN_DIM = 32  # the smallest Matryoshka dimension Qwen3-Embedding is trained for


class Embedder:
    """A Qwen3-Embedding checkpoint (local directory or hub id) loaded on one device.

    `backend`, `share_prefix` and `cuda_graphs` as for Reranker; a request's texts form one group, so an
    instruction's tokens are computed once per micro-batch.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        backend: str | None = None,
        share_prefix: bool = True,
        cuda_graphs: bool | None = None,
    ) -> None:
        options = EngineOptions.validate(
            device, dtype, max_length, max_batch_tokens, backend, share_prefix, cuda_graphs
        )
        ckpt = Checkpoint.open(model)
        self.prompt = EmbeddingPrompt(ckpt.tokenizer, options.max_length)
        self.engine = Engine(ckpt, options)

    def __repr__(self) -> str:
        return f"Embedder({self.engine.describe()})"

    @property
    def device(self) -> torch.device:
        return self.engine.options.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.options.dtype

    @property
    def dim(self) -> int:
        return self.engine.config.hidden_size

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        instruction: str | None = None,
        dim: int | None = None,
        normalize: bool = True,
        as_tensor: bool = False,
        show_progress: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Embeddings float32 [n, dim] (a single str gives n = 1), in the order of `texts`.

        `instruction` marks the texts as queries (`Instruct: ...\\nQuery:...`); documents take none.
        `dim` keeps the first `dim` components (Matryoshka), renormalised when `normalize`.
        `as_tensor=True` returns a torch tensor on the engine's device instead of a numpy array.
        """
        request = EmbedRequest(texts, instruction, dim, normalize)
        return self.embed_batch([request], as_tensor=as_tensor, show_progress=show_progress)[0]

    def check(self, request: EmbedRequest) -> None:
        """Raise ValueError if the request does not fit this model (its `dim`); types were checked on construction."""
        if request.dim is not None:
            check_int(request.dim, "dim", min(MIN_DIM, self.dim), self.dim)

    def encode(self, request: EmbedRequest, start: int = 0, end: int | None = None) -> list[list[int]]:
        """The official recipe's token ids of each text of `request` (texts start:end), as embedding uses them."""
        return self.prompt.encode(request.texts[start:end], request.instruction)

    def embed_batch(
        self,
        requests: Sequence[EmbedRequest],
        *,
        as_tensor: bool = False,
        show_progress: bool = False,
        token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[np.ndarray] | list[torch.Tensor]:
        """Several requests in one engine pass (how a server merges concurrent callers): one [n_i, dim_i] each.

        `token_ids`: each request's ids exactly as `encode` gives them, from a caller that tokenized them
        already; they are checked against the requests and the model, not re-made.
        """
        check_bool(as_tensor, "as_tensor")
        check_bool(show_progress, "show_progress")
        for i, request in enumerate(requests):
            if not isinstance(request, EmbedRequest):
                raise TypeError(f"requests[{i}] must be an EmbedRequest, got {type(request).__name__}")
            self.check(request)
        if not requests:
            return []
        sizes = [len(r.texts) for r in requests]
        with tqdm(total=sum(sizes), unit="text", disable=not show_progress) as progress:
            hidden = self.engine.run_requests(
                sizes, lambda i, a, b: self.encode(requests[i], a, b), token_ids, progress
            )  # [N, H] fp32
        results = []
        for request, states in zip(requests, hidden.split(sizes)):
            vectors = states[:, : request.dim or self.dim]
            if request.normalize:
                vectors = F.normalize(vectors, p=2, dim=-1)
            results.append(vectors if as_tensor else vectors.cpu().numpy())
        return results
