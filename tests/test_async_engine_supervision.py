"""AsyncEngine supervision: a fault of the worker itself fails the requests it held, never hangs a caller, and
the worker serves on; `health()` tells serving from faulted, closing and closed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from qrerank import Reranker, ScoreRequest, Tokenized
from qrerank.serving import AsyncEngine, async_engine
from qrerank.serving.async_engine import EngineClosed, WorkerFault


class BrokenObserver:
    """A BatchObserver that raises on its first `failures` passes, as a buggy metrics exporter would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def observe_batch(self, kind: str, queue_seconds: Sequence[float], sequences: int, run_seconds: float) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("observer broke")

    def observe_retry(self, kind: str, requests: int) -> None:
        pass

    def observe_cancelled(self, kind: str) -> None:
        pass


def test_a_fault_in_an_observer_fails_its_pass_and_the_worker_serves_on(reranker: Reranker) -> None:
    async def main() -> tuple[list[object], object, np.ndarray, object]:
        async with AsyncEngine(reranker, max_wait_ms=20, observer=BrokenObserver(failures=1)) as engine:
            assert engine.health().ok
            failed = await asyncio.wait_for(
                asyncio.gather(engine.score("q", ["a"]), engine.score("r", ["b"]), return_exceptions=True), 10
            )
            faulted = engine.health()
            served = await asyncio.wait_for(engine.score("q", ["a"]), 10)
            return failed, faulted, served, engine.health()

    failed, faulted, served, healthy = asyncio.run(main())
    for error in failed:  # both were in the pass whose observer raised
        assert isinstance(error, WorkerFault) and "observer broke" in str(error)
    assert not faulted.ok and faulted.state == "faulted" and "observer broke" in faulted.reason  # type: ignore[attr-defined]
    np.testing.assert_allclose(served, reranker.score("q", ["a"]), rtol=0, atol=1e-6)
    assert healthy.ok and healthy.state == "serving"  # type: ignore[attr-defined]


def test_a_fault_outside_any_pass_fails_the_queue_and_the_worker_serves_on(
    reranker: Reranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    original, calls = async_engine.take_pass, []

    def take_pass(*args: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("scheduler bug")
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(async_engine, "take_pass", take_pass)

    async def main() -> tuple[object, np.ndarray, int]:
        async with AsyncEngine(reranker) as engine:
            failed = await asyncio.gather(asyncio.wait_for(engine.score("q", ["a"]), 10), return_exceptions=True)
            served = await asyncio.wait_for(engine.score("q", ["a"]), 10)
            return failed[0], served, engine.faults

    failed, served, faults = asyncio.run(main())
    assert isinstance(failed, WorkerFault) and "scheduler bug" in str(failed) and faults == 1
    np.testing.assert_allclose(served, reranker.score("q", ["a"]), rtol=0, atol=1e-6)


def test_health_while_closing_and_after(reranker: Reranker) -> None:
    async def main() -> tuple[str, str, np.ndarray, object]:
        engine = AsyncEngine(reranker, max_wait_ms=300)
        pending = asyncio.ensure_future(engine.score("q", ["doc"]))
        await asyncio.sleep(0.05)  # queued, waiting for company
        closing = asyncio.ensure_future(engine.close())
        await asyncio.sleep(0)
        during = engine.health()
        await closing
        late = await asyncio.gather(engine.score("late", ["doc"]), return_exceptions=True)
        return during.state, engine.health().state, await pending, late[0]

    during, after, finished, late = asyncio.run(main())
    assert (during, after) == ("closing", "closed")
    np.testing.assert_allclose(finished, reranker.score("q", ["doc"]), rtol=0, atol=1e-6)
    assert isinstance(late, EngineClosed)


def test_close_waits_for_requests_still_being_tokenized(reranker: Reranker, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = reranker.tokenize

    def slow_tokenize(request: ScoreRequest) -> Tokenized:
        release.wait(10)
        return original(request)

    monkeypatch.setattr(reranker, "tokenize", slow_tokenize)

    async def main() -> tuple[np.ndarray, bool]:
        engine = AsyncEngine(reranker)
        accepted = asyncio.ensure_future(engine.score("q", ["doc"]))
        await asyncio.sleep(0.05)  # being tokenized on a worker thread
        closing = asyncio.ensure_future(engine.close())
        await asyncio.sleep(0.05)
        waited = not closing.done()
        release.set()
        await closing
        return await accepted, waited

    scores, waited = asyncio.run(main())
    monkeypatch.undo()
    assert waited
    np.testing.assert_allclose(scores, reranker.score("q", ["doc"]), rtol=0, atol=1e-6)
