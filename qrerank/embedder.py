"""Embedder: Qwen3-Embedding vectors by last-token pooling, with Matryoshka truncation and L2 normalisation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qrerank.checkpoint import Checkpoint
from qrerank.engine import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_LENGTH, Engine, EngineOptions
from qrerank.prompts import EmbeddingPrompt
from qrerank.validation import check_bool, check_int, check_optional_str, check_str_list

MIN_DIM = 32  # the smallest Matryoshka dimension Qwen3-Embedding is trained for


class Embedder:
    """A Qwen3-Embedding checkpoint (local directory or hub id) loaded on one device."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ) -> None:
        options = EngineOptions.validate(device, dtype, max_length, max_batch_tokens)
        ckpt = Checkpoint.open(model)
        self.prompt = EmbeddingPrompt(ckpt.tokenizer, options.max_length)
        self.engine = Engine(ckpt, options)

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
        texts = [texts] if isinstance(texts, str) else check_str_list(texts, "texts")
        check_optional_str(instruction, "instruction")
        dim = self.dim if dim is None else check_int(dim, "dim", min(MIN_DIM, self.dim), self.dim)
        check_bool(normalize, "normalize")
        check_bool(as_tensor, "as_tensor")
        check_bool(show_progress, "show_progress")
        if texts:
            hidden = self.engine.run(self.prompt.encode(texts, instruction), show_progress)  # [n, H] fp32
        else:
            hidden = torch.empty((0, self.dim), dtype=torch.float32, device=self.device)
        vectors = hidden[:, :dim]
        if normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        return vectors if as_tensor else vectors.cpu().numpy()
