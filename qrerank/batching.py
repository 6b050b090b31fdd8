"""Length-bucketed packing: token sequences -> micro-batches of flat (input_ids, positions, cu_seqlens)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [T] int64: the sequences back to back, no padding
    positions: torch.Tensor  # [T] int64: 0..len-1 within each sequence
    cu_seqlens: torch.Tensor  # [B+1] int32: sequence b is tokens cu_seqlens[b]:cu_seqlens[b+1]
    max_seqlen: int
    indices: np.ndarray  # [B] int64: where each sequence sits in the caller's list


def plan_batches(lengths: np.ndarray, max_batch_tokens: int) -> list[np.ndarray]:
    """Group sequence indices into micro-batches of at most `max_batch_tokens` tokens.

    Sequences are sorted by length so each micro-batch holds similar lengths (the attention work per
    token stays even, and a later padded kernel wastes little). Longest first: the largest batch runs
    first, so memory trouble shows at once. A sequence longer than the budget runs alone.
    """
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start, tokens = 0, 0
    for pos, length in enumerate(lengths[order].tolist()):
        if tokens and tokens + length > max_batch_tokens:
            batches.append(order[start:pos])
            start, tokens = pos, 0
        tokens += length
    if len(order):
        batches.append(order[start:])
    return batches


def pack(sequences: Sequence[Sequence[int]], indices: np.ndarray, device: torch.device) -> PackedBatch:
    """Pack the sequences selected by `indices` (each non-empty) into one flat batch on `device`."""
    chosen = [sequences[i] for i in indices.tolist()]
    lengths = np.fromiter(map(len, chosen), dtype=np.int64, count=len(chosen))
    assert lengths.min() > 0, "every packed sequence needs at least one token"
    cu_seqlens = np.zeros(len(chosen) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu_seqlens[1:])
    total = int(cu_seqlens[-1])
    input_ids = np.fromiter(chain.from_iterable(chosen), dtype=np.int64, count=total)
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu_seqlens[:-1].astype(np.int64), lengths)
    return PackedBatch(
        input_ids=_to_device(input_ids, device),
        positions=_to_device(positions, device),
        cu_seqlens=_to_device(cu_seqlens, device),
        max_seqlen=int(lengths.max()),
        indices=indices,
    )


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        # Pinned staging lets the copy run asynchronously with respect to the host.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor
