"""The AsyncEngine's queue: large requests cut by items into micro-batch slices, interleaved with small ones.

A pass is at most one engine micro-batch: `max_tokens` packed tokens (a request's shared prompt prefix
counted once, as the engine packs it) and `max_sequences` sequences, all of one kind. A request that
fits a pass ("small") is never split; a larger one is cut by items, never inside an item, into
slices of the room a pass has left. Each pass takes:

  1. small requests whole, in arrival order, up to half the pass while large ones wait (the first
     one always: it fits), all of it otherwise;
  2. a slice of each large request in turn, round-robin (one that got a slice goes to the back of
     the queue), in the room left;
  3. more small requests whole, in the room the large ones left.

So a small request waits for the pass running when it came and, unless small ones fill half of every
pass, runs in the next: a few micro-batch times, whatever large requests are queued. Large requests
keep at least half of each pass between them. An abandoned request's slices are simply never taken.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from qrerank.batching import shared_prefix_len
from qrerank.requests import EmbedRequest, ScoreRequest, Tokenized


@dataclass(frozen=True)
class Layout:
    """Where a request's items cost what: made once per request, off the event loop."""

    token_ends: np.ndarray  # [items + 1] int64: packed tokens of items :i, the shared prefix not counted
    sequence_ends: np.ndarray  # [items + 1] int64: sequences of items :i
    prefix: int  # tokens shared by all sequences, packed once per slice

    @classmethod
    def of(cls, tokenized: Tokenized, share_prefix: bool) -> Layout:
        lengths = np.fromiter(map(len, tokenized.ids), dtype=np.int64, count=len(tokenized.ids))  # [S]
        prefix = shared_prefix_len(tokenized.ids) if share_prefix else 0
        owners = np.arange(len(lengths)) if tokenized.owners is None else tokenized.owners
        own = np.bincount(owners, weights=lengths - prefix, minlength=tokenized.items).astype(np.int64)  # [items]
        sequences = np.bincount(owners, minlength=tokenized.items)  # [items]
        zero = np.zeros(1, dtype=np.int64)
        return cls(np.concatenate([zero, np.cumsum(own)]), np.concatenate([zero, np.cumsum(sequences)]), prefix)


@dataclass(frozen=True)
class Slice:
    """Items start:end of a job, taken into one pass."""

    job: Job
    start: int
    end: int
    tokens: int
    sequences: int
    waited: float  # seconds since the job joined the queue, or since its previous slice was taken

    @property
    def request(self) -> ScoreRequest | EmbedRequest:
        """The request of these items only; every other field of the caller's request kept as it is."""
        request = self.job.request
        if (self.start, self.end) == (0, self.job.items):
            return request
        if isinstance(request, ScoreRequest):
            return dataclasses.replace(request, docs=request.docs[self.start : self.end])
        return dataclasses.replace(request, texts=request.texts[self.start : self.end])

    @property
    def tokenized(self) -> Tokenized:
        whole = (self.start, self.end) == (0, self.job.items)
        return self.job.tokenized if whole else self.job.tokenized.slice(self.start, self.end)


@dataclass(eq=False)
class Job:
    """One caller's request in the queue: what is taken so far, and the results of the slices done."""

    kind: str  # requests of one kind share passes
    request: ScoreRequest | EmbedRequest
    tokenized: Tokenized
    layout: Layout
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)  # when its caller submitted it
    cursor: int = 0  # items before it are taken
    queued_at: float = 0.0  # when it last joined the queue
    parts: list[np.ndarray] = field(default_factory=list)  # results of its slices, in item order

    def __post_init__(self) -> None:
        self.queued_at = self.submitted

    @property
    def items(self) -> int:
        return len(self.layout.sequence_ends) - 1

    @property
    def remaining_tokens(self) -> int:
        return self._tokens(self.cursor, self.items)

    @property
    def remaining_sequences(self) -> int:
        ends = self.layout.sequence_ends
        return int(ends[-1] - ends[self.cursor])

    def _tokens(self, start: int, end: int) -> int:
        ends = self.layout.token_ends
        return self.layout.prefix + int(ends[end] - ends[start])

    def fits(self, tokens: int, sequences: int) -> bool:
        """Whether all its remaining items fit in `tokens` and `sequences`."""
        return self.remaining_tokens <= tokens and self.remaining_sequences <= sequences

    def take(self, tokens: int, sequences: int, at_least_one: bool) -> Slice | None:
        """The longest run of items from the cursor within `tokens` and `sequences` (at least one item
        when `at_least_one`); None when nothing is taken."""
        layout, start = self.layout, self.cursor
        # token_ends and sequence_ends are non-decreasing: the last item that fits is found by bisection
        by_tokens = np.searchsorted(layout.token_ends, layout.token_ends[start] + tokens - layout.prefix, "right")
        by_sequences = np.searchsorted(layout.sequence_ends, layout.sequence_ends[start] + sequences, "right")
        end = min(int(by_tokens), int(by_sequences)) - 1
        if end <= start:
            if not at_least_one:
                return None
            end = start + 1
        now = time.perf_counter()
        taken = Slice(
            self, start, end, self._tokens(start, end), int(layout.sequence_ends[end] - layout.sequence_ends[start]),
            now - self.queued_at,
        )  # fmt: skip
        self.cursor, self.queued_at = end, now
        return taken

    def deliver(self, result: np.ndarray) -> None:
        """A slice's result; the caller's answer once the last slice is back. A job has one slice in flight
        at a time (passes run one after another), so results come in item order."""
        if self.future.done():  # its caller is gone, or an earlier slice failed
            return
        self.parts.append(result)
        if self.cursor == self.items:
            self.future.set_result(self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts))


class _Pass:
    """The slices of the pass being planned, within its budget."""

    def __init__(self, max_tokens: int, max_sequences: int) -> None:
        self.slices: list[Slice] = []
        self.tokens, self.sequences = max_tokens, max_sequences  # room left

    def add(self, piece: Slice | None) -> None:
        if piece is not None:
            self.slices.append(piece)
            self.tokens -= piece.tokens
            self.sequences -= piece.sequences


def take_pass(queue: deque[Job], max_tokens: int, max_sequences: int) -> list[Slice]:
    """The next pass, of the head job's kind (see the module's docstring). Jobs that got a slice leave
    their places; those with items left rejoin at the back."""
    kind = queue[0].kind
    jobs = [job for job in queue if job.kind == kind]
    small = [job for job in jobs if job.fits(max_tokens, max_sequences)]
    large = [job for job in jobs if not job.fits(max_tokens, max_sequences)]
    planned = _Pass(max_tokens, max_sequences)
    small_room = max_tokens // 2 if large else max_tokens
    for job in small:
        if not planned.slices or job.fits(planned.tokens - (max_tokens - small_room), planned.sequences):
            planned.add(job.take(planned.tokens, planned.sequences, at_least_one=True))
    for job in large:
        planned.add(job.take(planned.tokens, planned.sequences, at_least_one=not planned.slices))
    for job in small:
        if job.cursor == 0 and job.fits(planned.tokens, planned.sequences):
            planned.add(job.take(planned.tokens, planned.sequences, at_least_one=True))
    served = {piece.job for piece in planned.slices}
    kept = [job for job in queue if job not in served]
    queue.clear()
    queue.extend(kept)
    queue.extend(piece.job for piece in planned.slices if piece.job.cursor < piece.job.items)
    return planned.slices
