"""AsyncEngine scheduling: large requests run in micro-batch slices interleaved with others, with the same
results; a small request is not stuck behind a large one; a cancelled request stops at the next pass; the
pass policy itself."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch

from qrerank import Embedder, EmbedRequest, Reranker, ScoreRequest, Tokenized
from qrerank.serving import AsyncEngine
from qrerank.serving.scheduling import Job, Layout, take_pass

LONG = " ".join(["word"] * 240)  # with the prompt template, cut at the fixtures' max_length of 256 tokens


class Passes:
    """A BatchObserver recording each pass's (requests, sequences)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.cancelled: list[str] = []

    def observe_batch(self, kind: str, queue_seconds: Sequence[float], sequences: int, run_seconds: float) -> None:
        self.batches.append((len(queue_seconds), sequences))

    def observe_retry(self, kind: str, requests: int) -> None:
        raise AssertionError("no pass should fail here")

    def observe_cancelled(self, kind: str) -> None:
        self.cancelled.append(kind)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """2 shared cores: torch's 2 intra-op threads beside the engine's other threads oversubscribe them (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_small_request_is_answered_while_a_large_one_runs(
    reranker: Reranker, one_torch_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 480 documents of max_length tokens: 240 micro-batches (about 4 s here), where one pass used to hold them all
    reranker.engine.warmup()  # compile the CPU ops for the thread count the fixture set, not in a request
    docs = [f"{i} {LONG}" for i in range(480)]
    small = ["Paris is the capital of France.", "Bananas are yellow.", "Rome is in Italy."]
    large_started = threading.Event()
    original = reranker.score_batch

    def score_batch(requests: Sequence[ScoreRequest], **kwargs: object) -> list[np.ndarray]:
        if any(r.query == "a long question" for r in requests):
            large_started.set()
        return original(requests, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reranker, "score_batch", score_batch)
    passes = Passes()

    async def main() -> tuple[np.ndarray, np.ndarray, float, bool]:
        async with AsyncEngine(reranker, observer=passes) as engine:
            large = asyncio.ensure_future(engine.score("a long question", docs))
            while not large_started.is_set():  # the device is computing the large request
                await asyncio.sleep(0.005)
            start = time.perf_counter()
            scores = await engine.score("capital of France?", small)
            waited = time.perf_counter() - start
            large_was_running = not large.done()
            return await large, scores, waited, large_was_running

    large_scores, small_scores, waited, large_was_running = asyncio.run(main())
    monkeypatch.undo()
    assert waited < 2.0 and large_was_running, f"the 3-document request waited {waited:.2f} s"
    np.testing.assert_allclose(small_scores, reranker.score("capital of France?", small), rtol=0, atol=1e-6)
    np.testing.assert_allclose(large_scores, reranker.score("a long question", docs), rtol=0, atol=1e-6)
    assert len(passes.batches) > 200  # one micro-batch (512 tokens: two of these documents) a pass
    assert any(requests == 2 for requests, _ in passes.batches)  # the small request shared a pass with the large


def test_slices_keep_unknown_request_fields_and_give_the_direct_results(
    reranker: Reranker, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dataclasses.dataclass(frozen=True)
    class TaggedRequest(ScoreRequest):  # a request with a field AsyncEngine does not know about
        tag: str = ""

    seen: list[tuple[str, str, int]] = []
    original = reranker.score_batch

    def score_batch(requests: Sequence[ScoreRequest], **kwargs: object) -> list[np.ndarray]:
        seen.extend((type(r).__name__, getattr(r, "tag", ""), len(r.docs)) for r in requests)
        return original(requests, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reranker, "score_batch", score_batch)
    docs = [f"{i} {LONG}" for i in range(7)]
    texts = [f"{LONG} {i}" for i in range(5)]

    async def main() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncEngine(reranker, embedder) as engine:
            return await asyncio.gather(
                engine.submit(TaggedRequest("q", docs, tag="mine"), raw=True),
                engine.submit(EmbedRequest(texts, dim=32)),
            )

    scores, vectors = asyncio.run(main())
    monkeypatch.undo()
    assert len(seen) > 1 and all(name == "TaggedRequest" and tag == "mine" for name, tag, _ in seen)
    assert sum(count for _, _, count in seen) == 7
    np.testing.assert_allclose(scores, reranker.score("q", docs, raw=True), rtol=0, atol=1e-5)
    np.testing.assert_allclose(vectors, embedder.embed(texts, dim=32), rtol=0, atol=1e-6)


def test_an_item_of_several_sequences_is_never_split(reranker: Reranker) -> None:
    docs = ["first window", "second window", "another doc", "its second part", "last", "and its end"]
    ids = reranker.encode(ScoreRequest("q", docs))
    windows = Tokenized(ids, owners=np.array([0, 0, 1, 1, 2, 2]))  # three items of two sequences each
    request = ScoreRequest("q", ["item one", "item two", "item three"])
    passes = Passes()

    async def main() -> np.ndarray:
        async with AsyncEngine(reranker, max_batch_sequences=3, observer=passes) as engine:
            return await engine.submit(request, tokenized=windows)

    scores = asyncio.run(main())
    assert passes.batches == [(1, 2)] * 3  # three sequences of room a pass: one whole item each
    expected = reranker.score_batch([request], tokenized=[windows])[0]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores, reranker.score("q", docs).reshape(3, 2).max(axis=1), rtol=0, atol=1e-6)


def test_a_cancelled_request_stops_at_the_next_pass(reranker: Reranker, monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []  # the query of each document computed, appended on the device thread
    original = reranker.score_batch

    def score_batch(requests: Sequence[ScoreRequest], **kwargs: object) -> list[np.ndarray]:
        computed.extend(r.query for r in requests for _ in r.docs)
        return original(requests, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reranker, "score_batch", score_batch)
    passes = Passes()

    async def main() -> np.ndarray:
        async with AsyncEngine(reranker, observer=passes) as engine:
            doomed = asyncio.ensure_future(engine.score("doomed", [f"{i} {LONG}" for i in range(40)]))
            while "doomed" not in computed:
                await asyncio.sleep(0.002)
            doomed.cancel()  # as the server does when its client disconnects or times out
            with pytest.raises(asyncio.CancelledError):
                await doomed
            return await engine.score("kept", ["doc"])

    kept = asyncio.run(main())
    monkeypatch.undo()
    assert computed.count("doomed") <= 4  # the pass it was in, and at most one that had started: 2 of its 40 each
    assert computed[-1] == "kept" and passes.cancelled == ["score"]
    np.testing.assert_allclose(kept, reranker.score("kept", ["doc"]), rtol=0, atol=1e-6)


def test_submit_checks_its_request(reranker: Reranker, embedder: Embedder) -> None:
    async def main() -> list[object]:
        async with AsyncEngine(reranker, embedder) as engine:
            return await asyncio.gather(
                engine.submit(("q", ["doc"])),  # type: ignore[arg-type]
                engine.submit(EmbedRequest(["x"]), raw=True),
                engine.submit(EmbedRequest(["x"], dim=7)),
                engine.submit(ScoreRequest("q", ["a", "b"]), tokenized=Tokenized([[1, 2]])),
                return_exceptions=True,
            )

    not_a_request, raw_embed, bad_dim, short_ids = asyncio.run(main())
    assert isinstance(not_a_request, TypeError) and "ScoreRequest or an EmbedRequest, got tuple" in str(not_a_request)
    assert isinstance(raw_embed, ValueError) and "raw=True applies to score requests" in str(raw_embed)
    assert isinstance(bad_dim, ValueError) and "7" in str(bad_dim)
    assert isinstance(short_ids, ValueError) and "1 items for the request's 2 inputs" in str(short_ids)


def test_each_pass_takes_small_requests_first_then_large_slices_in_turn() -> None:
    loop = asyncio.new_event_loop()

    def job(name: str, items: int) -> Job:  # items of 10 tokens, no shared prefix
        tokenized = Tokenized([[1] * 10 for _ in range(items)])
        request = ScoreRequest(name, [name] * items)
        return Job("score", request, tokenized, Layout.of(tokenized, share_prefix=False), loop.create_future())

    def planned(queue: deque[Job]) -> list[tuple[str, int]]:
        return [(piece.job.request.query, piece.end - piece.start) for piece in take_pass(queue, 100, 1000)]

    large, other = job("large", 50), job("other", 50)
    queue = deque([large])
    assert planned(queue) == [("large", 10)]  # a micro-batch of 100 tokens
    queue.extend([job("s1", 3), job("s2", 3), job("s3", 3)])  # they arrive while it runs
    assert planned(queue) == [("s1", 3), ("large", 7)]  # small first, up to half the pass; large fills
    queue.append(other)
    assert planned(queue) == [("s2", 3), ("large", 7)]
    assert planned(queue) == [("s3", 3), ("other", 7)]  # large requests in turn
    assert planned(queue) == [("large", 10)] and planned(queue) == [("other", 10)]
    queue.append(job("s4", 9))  # fits a pass, so is never split
    assert planned(queue) == [("s4", 9), ("large", 1)]
    assert list(queue) == [other, large]
    loop.close()
