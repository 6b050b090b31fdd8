"""Embedder: Qwen3-Embedding vectors by last-token pooling, with Matryoshka truncation and L2 normalisation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qrerank.checkpoint import Checkpoint
from qrerank.engine import DEFAULT_MAX_BATCH_TOKENS, Engine, EngineOptions
from qrerank.prompts import SPECIAL_TOKENS, EmbeddingPrompt
from qrerank.requests import EmbedRequest, Tokenized
from qrerank.st_folder import read_sentence_transformers
from qrerank.validation import check_bool, check_choice, check_int, check_optional_str

MIN_DIM = 32  # the smallest Matryoshka dimension Qwen3-Embedding is trained for


class Embedder:
    """A Qwen3-Embedding checkpoint (local directory or hub id) loaded on one device.

    `max_length`, `backend`, `share_prefix`, `cuda_graphs`, `warmup` and `special_tokens` as for Reranker; a
    request's texts form one group, so an instruction's tokens are computed once per micro-batch. A
    sentence-transformers folder's named prompts are `prompts`; one whose modules pool other than by the last
    token is refused. The `<|endoftext|>` that the recipe appends is the template's: a text's own
    `<|endoftext|>` stays one too under "parse".
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        backend: str | None = None,
        share_prefix: bool = True,
        cuda_graphs: bool | None = None,
        warmup: bool | None = None,
        special_tokens: str = "parse",
    ) -> None:
        options = EngineOptions.validate(
            device, dtype, max_length, max_batch_tokens, backend, share_prefix, cuda_graphs, warmup
        )
        check_choice(special_tokens, "special_tokens", SPECIAL_TOKENS)
        ckpt = Checkpoint.open(model)
        options = options.fit(ckpt.config)
        folder = read_sentence_transformers(ckpt.path)
        self.prompts: dict[str, str] = folder.prompts if folder else {}  # name -> raw text prefix
        self.default_prompt_name = folder.default_prompt_name if folder else None
        self.prompt = EmbeddingPrompt(ckpt.tokenizer, options.max_length, special_tokens)
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
        prompt_name: str | None = None,
        prompt: str | None = None,
        dim: int | None = None,
        normalize: bool = True,
        as_tensor: bool = False,
        show_progress: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Embeddings float32 [n, dim] (a single str gives n = 1), in the order of `texts`.

        `instruction` marks the texts as queries (`Instruct: ...\\nQuery:...`); documents take none.
        Or, the sentence-transformers way, `prompt_name` (one of `prompts`, e.g. "query") or `prompt`:
        a text put before each text as it is; at most one of the three. With none of them, a folder's
        `default_prompt_name` applies, as in sentence-transformers.
        `dim` keeps the first `dim` components (Matryoshka), renormalised when `normalize`.
        `as_tensor=True` returns a torch tensor on the engine's device instead of a numpy array.
        """
        prompt = self._resolve_prompt(instruction, prompt_name, prompt)
        request = EmbedRequest(texts, instruction, dim, normalize, prompt)
        return self.embed_batch([request], as_tensor=as_tensor, show_progress=show_progress)[0]

    def _resolve_prompt(self, instruction: str | None, prompt_name: str | None, prompt: str | None) -> str | None:
        check_optional_str(prompt_name, "prompt_name")
        check_optional_str(prompt, "prompt")
        if sum(x is not None for x in (instruction, prompt_name, prompt)) > 1:
            raise ValueError("give at most one of instruction, prompt_name and prompt")
        if prompt_name is None and prompt is None and instruction is None:
            prompt_name = self.default_prompt_name
        if prompt_name is not None and prompt_name not in self.prompts:
            raise ValueError(
                f"prompt_name {prompt_name!r:.80} is not one of this model's prompts {sorted(self.prompts)}"
            )
        return self.prompts[prompt_name] if prompt_name is not None else prompt

    def check(self, request: EmbedRequest) -> None:
        """Raise ValueError if the request does not fit this model (its `dim`); types were checked on construction."""
        if request.dim is not None:
            check_int(request.dim, "dim", min(MIN_DIM, self.dim), self.dim)

    def encode(self, request: EmbedRequest, start: int = 0, end: int | None = None) -> list[list[int]]:
        """The official recipe's token ids of each text of `request` (texts start:end), as embedding uses them."""
        return self.prompt.encode(request.texts[start:end], request.instruction, request.prompt)

    def tokenize(self, request: EmbedRequest) -> Tokenized:
        """The sequences `embed_batch` runs for `request` (for a caller that schedules them itself)."""
        return Tokenized(self.encode(request))

    def embed_batch(
        self,
        requests: Sequence[EmbedRequest],
        *,
        as_tensor: bool = False,
        show_progress: bool = False,
        tokenized: Sequence[Tokenized] | None = None,
    ) -> list[np.ndarray] | list[torch.Tensor]:
        """Several requests in one engine pass (how a server merges concurrent callers): one [n_i, dim_i] each.

        `tokenized`: each request's sequences exactly as `tokenize` gives them, from a caller that tokenized
        them already; they are checked against the requests and the model, not re-made.
        """
        check_bool(as_tensor, "as_tensor")
        check_bool(show_progress, "show_progress")
        for i, request in enumerate(requests):
            if not isinstance(request, EmbedRequest):
                raise TypeError(f"requests[{i}] must be an EmbedRequest, got {type(request).__name__}")
            self.check(request)
        if tokenized is not None:
            for i, t in enumerate(tokenized):
                if isinstance(t, Tokenized) and t.owners is not None:
                    raise ValueError(f"tokenized[{i}] has several sequences per text; embeddings take one each")
        if not requests:
            return []
        sizes = [len(r.texts) for r in requests]
        with tqdm(total=sum(sizes), unit="text", disable=not show_progress) as progress:
            hidden = self.engine.run_requests(
                sizes, lambda i, a, b: self.encode(requests[i], a, b), tokenized, progress
            )  # [N, H] fp32
        results = []
        for request, states in zip(requests, hidden.split(sizes)):
            vectors = states[:, : request.dim or self.dim]
            if request.normalize:
                vectors = F.normalize(vectors, p=2, dim=-1)
            results.append(vectors if as_tensor else vectors.cpu().numpy())
        return results
