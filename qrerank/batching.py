"""Length-bucketed packing with shared prefixes: token sequences -> micro-batches of flat packed tokens.

Sequences come in groups (the documents of one query, the texts of one request). The longest common
prefix of a group's token ids (for the reranker: template, instruction and query) is packed once per
micro-batch as a sequence of its own; each member then contributes only its own tokens, which attend
to the prefix's keys and values and continue its positions. The prefix is decided on the fully
tokenized sequences, so the tokens are exactly the official ones whatever BPE does at the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

ALIGN_BYTES = 16  # every tensor `pack` produces starts on this boundary (see _stage)


@dataclass(frozen=True)
class Part:
    """The members of one group that share one micro-batch, and the length of their shared prefix."""

    members: np.ndarray  # [n] int64: indices into the caller's sequences
    prefix_len: int  # 0: no shared prefix, each member packed whole


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [T] int64: the packed sequences back to back, no padding
    positions: torch.Tensor  # [T] int64: position of each token in its full (prefix + own) sequence
    cu_seqlens: torch.Tensor  # [S+1] int32: packed sequence s is tokens cu_seqlens[s]:cu_seqlens[s+1]
    max_seqlen: int
    prefix_offsets: torch.Tensor | None  # [S] int32: first token of the prefix sequence s attends to
    prefix_lens: torch.Tensor | None  # [S] int32: its length (0: none); both None when the batch shares nothing
    last_tokens: torch.Tensor  # [B] int64: the final token of each output sequence (prefixes have none)
    rows: torch.Tensor  # [B] int64, on the device: where each output sits in the caller's list
    indices: np.ndarray  # [B] int64: the same on the host


def shared_prefix_len(sequences: Sequence[Sequence[int]]) -> int:
    """Longest common prefix of the token ids, leaving every sequence at least one token of its own.

    Fewer than two sequences share nothing. The prefix common to all sequences is the one common to
    the lexicographically smallest and largest, so one vectorised comparison of those two suffices.
    """
    if len(sequences) < 2:
        return 0
    low, high = min(sequences), max(sequences)
    shortest = min(map(len, sequences))
    a, b = np.asarray(low[:shortest]), np.asarray(high[:shortest])
    mismatch = np.flatnonzero(a != b)
    common = int(mismatch[0]) if len(mismatch) else shortest
    return min(common, shortest - 1)


def plan_batches(
    lengths: np.ndarray, groups: Sequence[np.ndarray], prefix_lens: Sequence[int], max_batch_tokens: int
) -> list[list[Part]]:
    """Micro-batches of at most `max_batch_tokens` packed tokens, counting each part's prefix once.

    Within a group members go longest first, so similar lengths share a micro-batch and memory trouble
    shows at once; groups stay contiguous so a prefix is repeated only where a group spans two batches.
    A member that alone exceeds the budget runs alone (with its prefix).
    """
    batches: list[list[Part]] = []
    current: list[Part] = []
    tokens = 0
    for members, prefix in zip(groups, prefix_lens):
        order = members[np.argsort(-lengths[members], kind="stable")]
        start = 0
        for pos, own in enumerate((lengths[order] - prefix).tolist()):
            cost = own + (prefix if pos == start else 0)  # the prefix enters with the part's first member
            if tokens and tokens + cost > max_batch_tokens:
                if pos > start:
                    current.append(Part(order[start:pos], prefix))
                batches.append(current)
                current, tokens, start, cost = [], 0, pos, own + prefix
            tokens += cost
        if start < len(order):
            current.append(Part(order[start:], prefix))
    if current:
        batches.append(current)
    return batches


def batch_size(parts: Sequence[Part], lengths: np.ndarray) -> tuple[int, int]:
    """(packed tokens, packed sequences) of a planned micro-batch, prefixes counted once per part."""
    tokens = sum(part.prefix_len + int((lengths[part.members] - part.prefix_len).sum()) for part in parts)
    return tokens, sum(len(part.members) + (part.prefix_len > 0) for part in parts)


def split_parts(parts: Sequence[Part]) -> tuple[list[Part], list[Part]]:
    """Two micro-batches, each with about half of the outputs (of at least two); parts keep their prefix."""
    remaining = sum(len(part.members) for part in parts) // 2
    assert remaining > 0, "a single sequence cannot be split"
    first: list[Part] = []
    second: list[Part] = []
    for part in parts:
        take = min(remaining, len(part.members))
        remaining -= take
        if take:
            first.append(Part(part.members[:take], part.prefix_len))
        if take < len(part.members):
            second.append(Part(part.members[take:], part.prefix_len))
    return first, second


def pack(
    sequences: Sequence[Sequence[int]],
    parts: Sequence[Part],
    device: torch.device,
    pad_to: tuple[int, int] | None = None,
) -> PackedBatch:
    """Pack one planned micro-batch (each sequence non-empty) into flat tensors on `device`.

    `pad_to=(tokens, seqs)` pads to a fixed shape (a captured CUDA graph's): the spare tokens form one
    padding sequence, the spare sequences have zero length, the spare outputs read token 0, and the
    prefix tensors are always present (zeros where nothing is shared).
    """
    pieces: list[Sequence[int]] = []  # the packed sequences' token ids
    starts: list[int] = []  # position of each packed sequence's first token
    prefix_of: list[int] = []  # index of the packed prefix sequence each one attends to, -1 for none
    outputs: list[int] = []  # packed sequences whose final token is read
    for part in parts:
        prefix = part.prefix_len
        chosen = [sequences[i] for i in part.members.tolist()]
        owner = -1
        if prefix:
            owner = len(pieces)
            pieces.append(chosen[0][:prefix])
            starts.append(0)
            prefix_of.append(-1)
        for seq in chosen:
            outputs.append(len(pieces))
            pieces.append(seq[prefix:])
            starts.append(prefix)
            prefix_of.append(owner)
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    assert lengths.min() > 0, "every packed sequence needs at least one token"
    indices = np.concatenate([part.members for part in parts])
    n_out = len(outputs)
    if pad_to is not None:
        padded_tokens, padded_seqs = pad_to
        spare = padded_tokens - int(lengths.sum())
        n_extra = padded_seqs - len(pieces)
        assert spare >= 0 and n_extra >= (spare > 0), f"cannot pad {len(pieces)} sequences to {pad_to}"
        pieces += [[0] * spare] if spare else []  # the padding sequence: id 0, never read
        extra_lengths = [spare] * (spare > 0) + [0] * (n_extra - (spare > 0))
        lengths = np.concatenate([lengths, np.asarray(extra_lengths, dtype=np.int64)])
        starts += [0] * n_extra
        prefix_of += [-1] * n_extra
    cu_seqlens = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu_seqlens[1:])
    total = int(cu_seqlens[-1])
    token_first_position = np.repeat(cu_seqlens[:-1] - np.asarray(starts, dtype=np.int64), lengths)
    last_tokens = cu_seqlens[1:][np.asarray(outputs, dtype=np.int64)] - 1
    if pad_to is not None:
        last_tokens = np.concatenate([last_tokens, np.zeros(pad_to[1] - n_out, dtype=np.int64)])

    input_ids = np.fromiter(chain.from_iterable(pieces), dtype=np.int64, count=total)
    positions = np.arange(total, dtype=np.int64) - token_first_position
    if pad_to is not None:
        # The padding sequence is never read: position 0 keeps its RoPE lookups inside the table however
        # short max_length is (it can hold up to a whole bucket of tokens when a graph is captured).
        positions[total - spare :] = 0
    shared = pad_to is not None or any(part.prefix_len for part in parts)
    narrow = [cu_seqlens.astype(np.int32)]
    if shared:
        prefix_idx = np.asarray(prefix_of, dtype=np.int64)
        has_prefix = prefix_idx >= 0
        narrow.append(np.where(has_prefix, cu_seqlens[prefix_idx], 0).astype(np.int32))  # prefix_offsets
        narrow.append(np.where(has_prefix, lengths[prefix_idx], 0).astype(np.int32))  # prefix_lens
    # Two staging buffers (int64, int32) -> two host-to-device copies per micro-batch.
    input_ids_t, positions_t, last_t, rows = _stage([input_ids, positions, last_tokens, indices], device)
    narrow_t = _stage(narrow, device)
    return PackedBatch(
        input_ids=input_ids_t,
        positions=positions_t,
        cu_seqlens=narrow_t[0],
        max_seqlen=int(lengths.max()),
        prefix_offsets=narrow_t[1] if shared else None,
        prefix_lens=narrow_t[2] if shared else None,
        last_tokens=last_t,
        rows=rows,
        indices=indices,
    )


def _stage(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """`arrays` (one dtype) in one buffer copied to `device` at once, returned as views of it.

    Each view starts ALIGN_BYTES-aligned (the buffer itself comes from an allocator that aligns further):
    Triton specialises a kernel on whether each pointer argument is 16-byte aligned, so a slice at an odd
    offset would compile another variant of the kernel the first time it happens, in the middle of serving.
    """
    step = ALIGN_BYTES // arrays[0].itemsize
    starts = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([-(-len(a) // step) * step for a in arrays], out=starts[1:])
    buffer = np.zeros(int(starts[-1]), dtype=arrays[0].dtype)
    for start, array in zip(starts.tolist(), arrays):
        buffer[start : start + len(array)] = array
    staged = _to_device(buffer, device)
    return [staged[start : start + len(array)] for start, array in zip(starts.tolist(), arrays)]


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        # Pinned staging lets the copy run asynchronously with respect to the host.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor
