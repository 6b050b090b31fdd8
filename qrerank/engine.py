"""Engine: a loaded checkpoint on one device, turning token sequences into last-token hidden states."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from qrerank.batching import pack, plan_batches
from qrerank.checkpoint import Checkpoint, load_weights
from qrerank.model import Qwen3
from qrerank.ops import ops_for
from qrerank.validation import check_int, resolve_device, resolve_dtype

DEFAULT_MAX_LENGTH = 8192
DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class EngineOptions:
    """The constructor arguments shared by Reranker and Embedder, validated before any file is read."""

    device: torch.device
    dtype: torch.dtype
    max_length: int
    max_batch_tokens: int

    @classmethod
    def validate(
        cls, device: str | torch.device | None, dtype: str | torch.dtype | None, max_length: int, max_batch_tokens: int
    ) -> EngineOptions:
        resolved = resolve_device(device)
        return cls(
            device=resolved,
            dtype=resolve_dtype(dtype, resolved),
            max_length=check_int(max_length, "max_length", 1),
            max_batch_tokens=check_int(max_batch_tokens, "max_batch_tokens", 1),
        )


class Engine:
    def __init__(self, ckpt: Checkpoint, options: EngineOptions, head_token_ids: Sequence[int] | None = None) -> None:
        if options.max_length > ckpt.config.max_position_embeddings:
            raise ValueError(
                f"max_length={options.max_length} exceeds the model's max_position_embeddings "
                f"({ckpt.config.max_position_embeddings})"
            )
        self.options = options
        self.config = ckpt.config
        weights = load_weights(ckpt, options.device, options.dtype, head_token_ids)
        self.model = Qwen3(ckpt.config, weights, ops_for(options.device), max_positions=options.max_length)

    @property
    def head_rows(self) -> torch.Tensor:
        rows = self.model.weights.head_rows
        assert rows is not None, "engine was loaded without LM-head rows"
        return rows

    def run(self, sequences: Sequence[Sequence[int]], show_progress: bool = False) -> torch.Tensor:
        """Final-normed last-token states [N, H] (fp32, on the engine's device), in the order given."""
        device = self.options.device
        out = torch.empty((len(sequences), self.config.hidden_size), dtype=torch.float32, device=device)
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        batches = plan_batches(lengths, self.options.max_batch_tokens)
        with tqdm(total=int(lengths.sum()), unit="tok", unit_scale=True, disable=not show_progress) as progress:
            for indices in batches:
                batch = pack(sequences, indices, device)
                out[torch.from_numpy(indices).to(device)] = self.model.forward(batch).float()
                progress.update(int(lengths[indices].sum()))
        return out
