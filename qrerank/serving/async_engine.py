"""AsyncEngine: concurrent `await submit(...)` calls scheduled fairly into shared engine passes.

Callers on one event loop submit requests. Each request is tokenized (or its caller's token ids are
checked) on a worker thread at submission, never on the event loop. A single worker task cuts the
queued requests into passes of one engine micro-batch each (scheduling.py: small requests merge
whole, large ones are sliced by items and interleaved round-robin, so a small request is never stuck
behind a large one), waiting at most `max_wait_ms` after the oldest arrival for company, and runs
each pass with `Reranker.score_batch` / `Embedder.embed_batch` on one dedicated thread, the only one
that touches the device. Merging and slicing do not change results: an item's result does not
depend on its batch.

Isolation: bad input raises in the caller's own coroutine before anything is queued; if a merged
pass raises, each of its slices is retried alone so only the faulty request fails; a cancelled
caller (a client gone, a timeout) leaves the queue at once and its request stops at the next pass.
Supervision: a fault of the worker itself (outside that per-pass handling, e.g. in an observer)
fails the requests it was handling, is logged, and the worker carries on; `health()` reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from qrerank.embedder import Embedder
from qrerank.requests import EmbedRequest, ScoreRequest, Tokenized
from qrerank.reranker import Reranker
from qrerank.serving.health import EngineHealth, WorkerRecord
from qrerank.serving.scheduling import Job, Layout, Slice, take_pass
from qrerank.validation import check_bool, check_int

DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_BATCH_SEQUENCES = 512

SCORE, SCORE_RAW, EMBED = "score", "score_raw", "embed"  # requests of one kind share a pass

logger = logging.getLogger("qrerank.serving")


class EngineClosed(RuntimeError):
    """A request submitted to an AsyncEngine that is closing or closed."""


class WorkerFault(RuntimeError):
    """The batching worker failed while handling this request (a bug, not the request's fault)."""


class BatchObserver(Protocol):
    """Receives one record per engine pass (e.g. serving metrics); called on the event loop."""

    def observe_batch(self, kind: str, queue_seconds: Sequence[float], sequences: int, run_seconds: float) -> None:
        """`queue_seconds`: each slice's wait in the queue (since submission, or since its request's
        previous slice was taken); one entry per request in the pass."""

    def observe_retry(self, kind: str, requests: int) -> None:
        """A merged pass failed and its `requests` are being retried one by one."""

    def observe_cancelled(self, kind: str) -> None:
        """A queued request was cancelled by its caller and its remaining work dropped."""


class AsyncEngine:
    """A Reranker and/or an Embedder served to concurrent callers of one event loop.

    `max_wait_ms`: the longest the oldest queued request waits for others to join its pass (0: never
    wait; requests that arrive while a pass runs still merge into the next one).
    `max_batch_sequences`: at most this many sequences per pass; a pass also holds at most one engine
    micro-batch of tokens (the model's `max_batch_tokens`). Larger requests run in slices.
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
        self._queue: deque[Job] = deque()
        self._arrived = asyncio.Event()  # set on each submission and on close; cleared by the worker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._handling: list[Job] = []  # the jobs of the pass being run: those a worker fault fails
        self._record = WorkerRecord()
        self._preparing = 0  # accepted requests being tokenized, not queued yet
        self._closing = self._closed = False

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def submit(
        self, request: ScoreRequest | EmbedRequest, *, raw: bool = False, tokenized: Tokenized | None = None
    ) -> np.ndarray:
        """The result of one request, run in passes shared with concurrent callers: float32 [docs] for a
        ScoreRequest (`raw`: logits instead of probabilities), float32 [n, dim] for an EmbedRequest.

        `tokenized`: the request's sequences as the model's `tokenize` gives them, when the caller has
        them already (they are checked, not re-made); otherwise the request is tokenized here, off the
        event loop. The request object reaches `score_batch` / `embed_batch` as given (cut by items
        when it runs in slices), so fields this class does not know about travel with it.
        """
        kind, model = self._route(request, check_bool(raw, "raw"))
        items = len(request.docs) if isinstance(request, ScoreRequest) else len(request.texts)
        loop = self._bind(asyncio.get_running_loop())
        if items == 0:
            if isinstance(request, ScoreRequest):
                return np.empty(0, dtype=np.float32)
            return np.empty((0, request.dim or model.dim), dtype=np.float32)  # type: ignore[union-attr]
        self._ensure_worker(loop)
        self._preparing += 1  # accepted: close() now waits for it
        submitted = time.perf_counter()  # the wait for company (max_wait_ms) overlaps the tokenizing
        try:
            tokenized, layout = await loop.run_in_executor(None, _prepare, model, request, items, tokenized)
            job = Job(kind, request, tokenized, layout, loop.create_future(), submitted)
            self._queue.append(job)
            self._ensure_worker(loop)  # it may have stopped (cancelled) while this request was tokenized
        finally:
            self._preparing -= 1
            self._arrived.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            if job in self._queue:  # its remaining work is dropped, not computed for nobody
                self._queue.remove(job)
                if self._observer is not None:  # called back by the loop: an observer fault cannot mask the cancel
                    loop.call_soon(self._observer.observe_cancelled, kind)
            raise

    async def score(
        self,
        query: str,
        docs: Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        tokenized: Tokenized | None = None,
    ) -> np.ndarray:
        """`Reranker.score` shared with concurrent calls: float32 [len(docs)] in the docs' order."""
        return await self.submit(ScoreRequest(query, docs, instruction), raw=raw, tokenized=tokenized)

    async def embed(
        self,
        texts: str | Sequence[str],
        *,
        instruction: str | None = None,
        dim: int | None = None,
        normalize: bool = True,
        tokenized: Tokenized | None = None,
    ) -> np.ndarray:
        """`Embedder.embed` shared with concurrent calls: float32 [n, dim] in the order of `texts`."""
        return await self.submit(EmbedRequest(texts, instruction, dim, normalize), tokenized=tokenized)

    def health(self) -> EngineHealth:
        """Whether the engine takes and answers requests now, and if not why (health.py)."""
        stopped = self._worker is not None and self._worker.done()
        return self._record.health(self._closing, self._closed, stopped)

    @property
    def faults(self) -> int:
        """Worker faults survived so far."""
        return self._record.faults

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running one, then stop the worker thread."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._closed = True

    def _route(self, request: object, raw: bool) -> tuple[str, Reranker | Embedder]:
        if isinstance(request, ScoreRequest):
            if self.reranker is None:
                raise ValueError("this AsyncEngine serves no reranker, so it cannot score")
            return (SCORE_RAW if raw else SCORE), self.reranker
        if isinstance(request, EmbedRequest):
            if self.embedder is None:
                raise ValueError("this AsyncEngine serves no embedder, so it cannot embed")
            if raw:
                raise ValueError("raw=True applies to score requests; an EmbedRequest has `normalize`")
            self.embedder.check(request)  # a bad `dim` fails here, in its caller, never inside a shared pass
            return EMBED, self.embedder
        raise TypeError(f"request must be a ScoreRequest or an EmbedRequest, got {type(request).__name__}")

    def _bind(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        if self._closing:
            raise EngineClosed("this AsyncEngine is closed")
        if self._loop is None:
            self._loop = loop
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qrerank-engine")
        elif self._loop is not loop:
            raise RuntimeError("an AsyncEngine serves the event loop it was first used in; create one per loop")
        return loop

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name="qrerank-batcher")

    async def _work(self) -> None:
        """The supervised batching loop: runs until closed and drained, surviving its own faults."""
        while True:
            try:
                await self._batch_until_closed()
                return
            except Exception as err:  # a bug of the worker, not of a request: fail what it held, carry on
                failed = self._handling or list(self._queue)
                fault = WorkerFault(f"the AsyncEngine worker failed ({err!r}); the request was dropped")
                fault.__cause__ = err
                for job in failed:
                    self._fail(job, fault)
                self._record.fault(err)
                logger.error("AsyncEngine worker fault; %d request(s) failed, serving on", len(failed), exc_info=err)
            except BaseException:  # cancelled with its event loop: nobody will run the queue any more
                for job in list(self._queue):
                    self._fail(job, WorkerFault("the AsyncEngine worker stopped"))
                raise
            finally:
                self._handling = []

    async def _batch_until_closed(self) -> None:
        while self._queue or self._preparing or not self._closing:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            head = self._queue[0]
            max_tokens = self._model(head.kind).engine.options.max_batch_tokens
            # Wait for company until the head has waited max_wait_s or its kind fills a pass. Requests that
            # queued while the previous pass ran are past their deadline already and go at once.
            while not self._closing and not self._fills_a_pass(head.kind, max_tokens):
                remaining = head.submitted + self.max_wait_s - time.perf_counter()
                if remaining <= 0 or head not in self._queue:
                    break
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
            if self._queue:
                kind = self._queue[0].kind
                max_tokens = self._model(kind).engine.options.max_batch_tokens
                slices = take_pass(self._queue, max_tokens, self.max_batch_sequences)
                self._handling = [piece.job for piece in slices]
                await self._run(kind, slices)
                self._handling = []

    def _fills_a_pass(self, kind: str, max_tokens: int) -> bool:
        jobs = [job for job in self._queue if job.kind == kind]
        return (
            sum(job.remaining_tokens for job in jobs) >= max_tokens
            or sum(job.remaining_sequences for job in jobs) >= self.max_batch_sequences
        )

    def _model(self, kind: str) -> Reranker | Embedder:
        model = self.embedder if kind == EMBED else self.reranker
        assert model is not None
        return model

    async def _run(self, kind: str, slices: list[Slice]) -> None:
        assert self._executor is not None and self._loop is not None
        start = time.perf_counter()
        try:
            results = await self._loop.run_in_executor(self._executor, self._pass, kind, slices)
        except Exception as err:
            if len(slices) == 1:
                self._fail(slices[0].job, err)
                return
            if self._observer is not None:
                self._observer.observe_retry(kind, len(slices))
            for piece in slices:  # one pass each: a request that breaks the engine fails alone
                if not piece.job.future.done():
                    await self._run(kind, [piece])
            return
        self._record.passed()
        if self._observer is not None:
            sequences = sum(piece.sequences for piece in slices)
            waits = [piece.waited for piece in slices]
            self._observer.observe_batch(kind, waits, sequences, time.perf_counter() - start)
        for piece, result in zip(slices, results, strict=True):
            piece.job.deliver(result)

    def _pass(self, kind: str, slices: list[Slice]) -> list[np.ndarray]:
        """One engine pass (one micro-batch) on the device thread."""
        requests = [piece.request for piece in slices]
        tokenized = [piece.tokenized for piece in slices]
        if kind == EMBED:
            assert self.embedder is not None
            return self.embedder.embed_batch(requests, tokenized=tokenized)  # type: ignore[arg-type, return-value]
        assert self.reranker is not None
        return self.reranker.score_batch(requests, raw=kind == SCORE_RAW, tokenized=tokenized)  # type: ignore[arg-type]

    def _fail(self, job: Job, error: BaseException) -> None:
        """The job's caller gets `error`; its remaining slices are dropped."""
        if job in self._queue:
            self._queue.remove(job)
        if not job.future.done():
            job.future.set_exception(error)


def _prepare(
    model: Reranker | Embedder, request: ScoreRequest | EmbedRequest, items: int, tokenized: Tokenized | None
) -> tuple[Tokenized, Layout]:
    """A request's sequences and their layout, on a worker thread (tokenizing is the costly part)."""
    if tokenized is None:
        tokenized = model.tokenize(request)  # type: ignore[arg-type]
    else:
        model.engine.check_tokenized([tokenized], [items])
    return tokenized, Layout.of(tokenized, model.engine.options.share_prefix)
