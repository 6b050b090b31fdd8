"""Engine: a loaded checkpoint on one device, turning groups of token sequences into last-token hidden states."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from qrerank.batching import pack, plan_batches, shared_prefix_len
from qrerank.checkpoint import Checkpoint, load_weights
from qrerank.model import Qwen3
from qrerank.ops import ops_for
from qrerank.validation import check_bool, check_int, resolve_backend, resolve_device, resolve_dtype

DEFAULT_MAX_LENGTH = 8192
DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class EngineOptions:
    """The constructor arguments shared by Reranker and Embedder, validated before any file is read."""

    device: torch.device
    dtype: torch.dtype
    max_length: int
    max_batch_tokens: int
    backend: str  # "triton": qrerank.kernels; "torch": the reference twins (debugging, comparison)
    share_prefix: bool  # compute a group's common token prefix once per micro-batch

    @classmethod
    def validate(
        cls,
        device: str | torch.device | None,
        dtype: str | torch.dtype | None,
        max_length: int,
        max_batch_tokens: int,
        backend: str | None = None,
        share_prefix: bool = True,
    ) -> EngineOptions:
        resolved = resolve_device(device)
        return cls(
            device=resolved,
            dtype=resolve_dtype(dtype, resolved),
            max_length=check_int(max_length, "max_length", 1),
            max_batch_tokens=check_int(max_batch_tokens, "max_batch_tokens", 1),
            backend=resolve_backend(backend, resolved),
            share_prefix=check_bool(share_prefix, "share_prefix"),
        )


class Engine:
    """The model plus the batching around it. `run` may be called from several threads: one runs at a time."""

    def __init__(self, ckpt: Checkpoint, options: EngineOptions, head_token_ids: Sequence[int] | None = None) -> None:
        if options.max_length > ckpt.config.max_position_embeddings:
            raise ValueError(
                f"max_length={options.max_length} exceeds the model's max_position_embeddings "
                f"({ckpt.config.max_position_embeddings})"
            )
        self.options = options
        self.config = ckpt.config
        weights = load_weights(ckpt, options.device, options.dtype, head_token_ids)
        self.model = Qwen3(ckpt.config, weights, ops_for(options.backend), max_positions=options.max_length)
        self._lock = threading.Lock()

    @property
    def head_rows(self) -> torch.Tensor:
        rows = self.model.weights.head_rows
        assert rows is not None, "engine was loaded without LM-head rows"
        return rows

    def run(self, groups: Sequence[Sequence[Sequence[int]]], show_progress: bool = False) -> torch.Tensor:
        """Final-normed last-token states [N, H] (fp32, on the engine's device) of every sequence, groups flattened.

        A group's sequences (one query's documents, one request's texts) may share a token prefix,
        which is then computed once per micro-batch.
        """
        device, options = self.options.device, self.options
        sequences = [seq for group in groups for seq in group]
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        members = np.split(np.arange(len(sequences)), np.cumsum([len(group) for group in groups])[:-1])
        prefixes = [shared_prefix_len(group) if options.share_prefix else 0 for group in groups]
        plan = plan_batches(lengths, members, prefixes, options.max_batch_tokens)
        out = torch.empty((len(sequences), self.config.hidden_size), dtype=torch.float32, device=device)
        with self._lock, tqdm(total=int(lengths.sum()), unit="tok", unit_scale=True, disable=not show_progress) as bar:
            for parts in plan:
                batch = pack(sequences, parts, device)
                out[batch.rows] = self.model.forward(batch).float()
                bar.update(int(sum(lengths[part.members].sum() for part in parts)))
        return out
