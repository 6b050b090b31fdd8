"""AsyncEngine: concurrent `await score(...)` / `await embed(...)` calls merged into shared engine passes.

Callers on one event loop submit requests; a single worker task collects what is queued (waiting at
most `max_wait_ms` after the oldest arrival for company) and hands the merged requests to
`Reranker.score_batch` / `Embedder.embed_batch` on one dedicated thread, the only one that touches
the device. The core engine packs them into its token-budgeted micro-batches; every caller gets its
own slice back. Merging does not change results: a text's result does not depend on its batch.

Isolation: bad input raises in the caller's own coroutine before anything is queued; if a merged
pass raises, each of its requests is retried alone so only the faulty one fails; a caller cancelled
while waiting is removed from the queue (a pass already running is not interrupted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from qrerank.embedder import Embedder
from qrerank.requests import EmbedRequest, ScoreRequest, Tokenized
from qrerank.reranker import Reranker
from qrerank.validation import check_bool, check_int

DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_BATCH_SEQUENCES = 512

SCORE, SCORE_RAW, EMBED = "score", "score_raw", "embed"  # requests of one kind share a pass


class BatchObserver(Protocol):
    """Receives one record per engine pass (e.g. serving metrics); called on the event loop."""

    def observe_batch(self, kind: str, queue_seconds: Sequence[float], sequences: int, run_seconds: float) -> None:
        """`queue_seconds`: each merged request's wait from submission to the start of the pass."""

    def observe_retry(self, kind: str, requests: int) -> None:
        """A merged pass failed and its `requests` are being retried one by one."""

    def observe_cancelled(self, kind: str) -> None:
        """A waiting request was cancelled by its caller and removed from the queue."""


@dataclass
class _Job:
    kind: str
    request: ScoreRequest | EmbedRequest
    sequences: int  # documents or texts: the unit of `max_batch_sequences`
    future: asyncio.Future[np.ndarray]
    tokenized: Tokenized | None  # the request's recipe ids when the caller has them already
    enqueued: float = field(default_factory=time.perf_counter)


class AsyncEngine:
    """A Reranker and/or an Embedder served to concurrent callers of one event loop.

    `max_wait_ms`: the longest the oldest queued request waits for others to join its pass (0: never
    wait; requests that arrive while a pass runs still merge into the next one).
    `max_batch_sequences`: at most this many documents/texts per pass (a larger request runs alone).
    Use as `async with AsyncEngine(...) as engine:` or call `await engine.close()` when done.
    """

    def __init__(
        self,
        reranker: Reranker | None = None,
        embedder: Embedder | None = None,
        *,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_batch_sequences: int = DEFAULT_MAX_BATCH_SEQUENCES,
        observer: BatchObserver | None = None,
    ) -> None:
        if reranker is None and embedder is None:
            raise ValueError("AsyncEngine needs a reranker, an embedder or both; got neither")
        if reranker is not None and not isinstance(reranker, Reranker):
            raise TypeError(f"reranker must be a qrerank.Reranker, got {type(reranker).__name__}")
        if embedder is not None and not isinstance(embedder, Embedder):
            raise TypeError(f"embedder must be a qrerank.Embedder, got {type(embedder).__name__}")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)):
            raise TypeError(f"max_wait_ms must be a number, got {type(max_wait_ms).__name__}")
        if not 0 <= max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be between 0 and 1000, got {max_wait_ms}")
        self.reranker = reranker
        self.embedder = embedder
        self.max_wait_s = max_wait_ms / 1000
        self.max_batch_sequences = check_int(max_batch_sequences, "max_batch_sequences", 1)
        self._observer = observer
        self._queue: deque[_Job] = deque()
        self._arrived = asyncio.Event()  # set on each submission and on close; cleared by the worker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def score(
        self,
        query: str,
        docs: Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        tokenized: Tokenized | None = None,
    ) -> np.ndarray:
        """`Reranker.score` merged with concurrent calls: float32 [len(docs)] in the docs' order.

        `tokenized`: the documents' sequences as `Reranker.tokenize` gives them, when the caller has them already.
        """
        if self.reranker is None:
            raise ValueError("this AsyncEngine serves no reranker, so it cannot score")
        request = ScoreRequest(query, docs, instruction)
        kind = SCORE_RAW if check_bool(raw, "raw") else SCORE
        if tokenized is not None:
            self.reranker.engine.check_tokenized([tokenized], [len(request.docs)])
        if not request.docs:
            return np.empty(0, dtype=np.float32)
        return await self._submit(kind, request, len(request.docs), tokenized)

    async def embed(
        self,
        texts: str | Sequence[str],
        *,
        instruction: str | None = None,
        dim: int | None = None,
        normalize: bool = True,
        tokenized: Tokenized | None = None,
    ) -> np.ndarray:
        """`Embedder.embed` merged with concurrent calls: float32 [n, dim] in the order of `texts`.

        `tokenized`: the texts' sequences as `Embedder.tokenize` gives them, when the caller has them already.
        """
        if self.embedder is None:
            raise ValueError("this AsyncEngine serves no embedder, so it cannot embed")
        request = EmbedRequest(texts, instruction, dim, normalize)
        self.embedder.check(request)  # a bad `dim` fails here, in its caller, never inside a merged pass
        if tokenized is not None:
            self.embedder.engine.check_tokenized([tokenized], [len(request.texts)])
        if not request.texts:
            return np.empty((0, request.dim or self.embedder.dim), dtype=np.float32)
        return await self._submit(EMBED, request, len(request.texts), tokenized)

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running one, then stop the worker thread."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _submit(
        self, kind: str, request: ScoreRequest | EmbedRequest, sequences: int, tokenized: Tokenized | None
    ) -> np.ndarray:
        if self._closing:
            raise RuntimeError("this AsyncEngine is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qrerank-engine")
            self._worker = loop.create_task(self._work(), name="qrerank-batcher")
        elif self._loop is not loop:
            raise RuntimeError("an AsyncEngine serves the event loop it was first used in; create one per loop")
        job = _Job(kind, request, sequences, loop.create_future(), tokenized)
        self._queue.append(job)
        self._arrived.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            if job in self._queue:  # still waiting: its work is dropped, not computed for nobody
                self._queue.remove(job)
                if self._observer is not None:
                    self._observer.observe_cancelled(kind)
            raise

    async def _work(self) -> None:
        """The batching loop: runs until closed and drained. Should it ever stop early, its callers are told."""
        try:
            await self._batch_until_closed()
        except BaseException as err:
            for job in self._queue:
                if not job.future.done():
                    job.future.set_exception(RuntimeError(f"the AsyncEngine worker stopped: {err!r}"))
            self._queue.clear()
            raise

    async def _batch_until_closed(self) -> None:
        while self._queue or not self._closing:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            head = self._queue[0]
            # Wait for company until the head has waited max_wait_s or its kind fills a pass. Requests that
            # queued while the previous pass ran are past their deadline already and go at once.
            while not self._closing and self._queued_sequences(head.kind) < self.max_batch_sequences:
                remaining = head.enqueued + self.max_wait_s - time.perf_counter()
                if remaining <= 0 or head not in self._queue:
                    break
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            if self._queue:
                await self._run(self._take(self._queue[0].kind))

    def _queued_sequences(self, kind: str) -> int:
        return sum(job.sequences for job in self._queue if job.kind == kind)

    def _take(self, kind: str) -> list[_Job]:
        """The oldest jobs of `kind` up to max_batch_sequences (at least one); the others keep their places."""
        taken, kept, total = [], deque(), 0
        for job in self._queue:
            if job.kind == kind and (not taken or total + job.sequences <= self.max_batch_sequences):
                taken.append(job)
                total += job.sequences
            else:
                kept.append(job)
        self._queue = kept
        return taken

    async def _run(self, jobs: list[_Job]) -> None:
        assert self._executor is not None and self._loop is not None
        kind, start = jobs[0].kind, time.perf_counter()
        try:
            results = await self._loop.run_in_executor(self._executor, self._pass, kind, jobs)
        except Exception as err:
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(err)
                return
            if self._observer is not None:
                self._observer.observe_retry(kind, len(jobs))
            for job in jobs:  # one pass each: a request that breaks the engine fails alone
                await self._run([job])
            return
        if self._observer is not None:
            waits = [start - job.enqueued for job in jobs]
            sequences = sum(job.sequences for job in jobs)
            self._observer.observe_batch(kind, waits, sequences, time.perf_counter() - start)
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():  # its caller may have gone while the pass ran
                job.future.set_result(result)

    def _pass(self, kind: str, jobs: list[_Job]) -> list[np.ndarray]:
        """One engine pass on the worker thread; requests that came without token ids are tokenized here."""
        model = self.embedder if kind == EMBED else self.reranker
        assert model is not None
        requests = [job.request for job in jobs]
        tokenized = [job.tokenized or model.tokenize(job.request) for job in jobs]  # type: ignore[arg-type]
        if kind == EMBED:
            assert self.embedder is not None
            return self.embedder.embed_batch(requests, tokenized=tokenized)  # type: ignore[arg-type, return-value]
        assert self.reranker is not None
        return self.reranker.score_batch(requests, raw=kind == SCORE_RAW, tokenized=tokenized)  # type: ignore[arg-type]
