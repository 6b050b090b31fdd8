"""AsyncEngine: merged passes give the direct calls' results; isolation of bad input, failing passes, cancellation."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from qrerank import Embedder, Reranker, ScoreRequest
from qrerank.serving import AsyncEngine

# Probabilities and unit vectors match within 1e-6. Raw logits and unnormalised states (|x| up to ~10)
# move by a few fp32 ulps with the batch they run in (the GEMMs block differently): 1e-5 for those.
RAW_ATOL = 1e-5
WORDS = "the capital of france is paris a snake python language list sort gravity force tokyo japan".split()


def _texts(rng: random.Random, count: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(0, 12))) for _ in range(count)]


class Recorder:
    """A BatchObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, int]] = []  # (kind, requests, sequences)
        self.retries: list[tuple[str, int]] = []
        self.cancelled: list[str] = []

    def observe_batch(self, kind: str, queue_seconds: Sequence[float], sequences: int, run_seconds: float) -> None:
        assert all(s >= 0 for s in queue_seconds) and run_seconds >= 0
        self.batches.append((kind, len(queue_seconds), sequences))

    def observe_retry(self, kind: str, requests: int) -> None:
        self.retries.append((kind, requests))

    def observe_cancelled(self, kind: str) -> None:
        self.cancelled.append(kind)


def test_interleaved_scores_and_embeddings_equal_the_direct_calls(reranker: Reranker, embedder: Embedder) -> None:
    rng = random.Random(0)
    score_calls = [
        (rng.choice(WORDS), _texts(rng, rng.randint(1, 4)), rng.choice([None, "Judge fruit"]), rng.random() < 0.3)
        for _ in range(24)
    ]
    embed_calls = [
        (_texts(rng, rng.randint(1, 3)), rng.choice([None, "Find it"]), rng.choice([None, 32, 48]), rng.random() < 0.8)
        for _ in range(24)
    ]
    recorder = Recorder()

    async def main() -> tuple[list[np.ndarray], list[np.ndarray]]:
        async with AsyncEngine(reranker, embedder, max_wait_ms=20, observer=recorder) as engine:
            scores = [engine.score(q, d, instruction=i, raw=raw) for q, d, i, raw in score_calls]
            embeds = [engine.embed(t, instruction=i, dim=dim, normalize=n) for t, i, dim, n in embed_calls]
            both = await asyncio.gather(*[c for pair in zip(scores, embeds) for c in pair])  # interleaved
            return list(both[0::2]), list(both[1::2])

    scores, embeds = asyncio.run(main())
    for (query, docs, instruction, raw), got in zip(score_calls, scores, strict=True):
        expected = reranker.score(query, docs, instruction=instruction, raw=raw)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=RAW_ATOL if raw else 1e-6)
    for (texts, instruction, dim, normalize), got in zip(embed_calls, embeds, strict=True):
        expected = embedder.embed(texts, instruction=instruction, dim=dim, normalize=normalize)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 if normalize else RAW_ATOL)
    assert {kind for kind, _, _ in recorder.batches} == {"score", "score_raw", "embed"}
    assert max(requests for _, requests, _ in recorder.batches) > 1  # requests were merged
    assert sum(requests for _, requests, _ in recorder.batches) == 48
    assert all(sequences <= 512 for _, _, sequences in recorder.batches)


def test_passes_respect_max_batch_sequences(reranker: Reranker) -> None:
    recorder = Recorder()

    async def main() -> list[np.ndarray]:
        async with AsyncEngine(reranker, max_wait_ms=50, max_batch_sequences=5, observer=recorder) as engine:
            return await asyncio.gather(
                *[engine.score(f"q{i}", ["a", "b"]) for i in range(6)], engine.score("big", ["x"] * 7)
            )

    results = asyncio.run(main())
    for i, result in enumerate(results[:6]):
        np.testing.assert_allclose(result, reranker.score(f"q{i}", ["a", "b"]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(results[6], reranker.score("big", ["x"] * 7), rtol=0, atol=1e-6)
    sequences = [seq for _, _, seq in recorder.batches]
    assert sum(sequences) == 19 and max(sequences) <= 5  # the big one ran in slices that filled the room left


def test_bad_input_fails_only_its_caller(reranker: Reranker, embedder: Embedder) -> None:
    async def main() -> list[object]:
        async with AsyncEngine(reranker, embedder, max_wait_ms=20) as engine:
            return await asyncio.gather(
                engine.score("q", ["good doc"]),
                engine.score("q", ["fine", 3]),  # type: ignore[list-item]
                engine.embed(["x"], dim=7),
                engine.embed(["y"], dim=32),
                engine.score(None, ["doc"]),  # type: ignore[arg-type]
                engine.score("q", ["d"], raw="yes"),  # type: ignore[arg-type]
                return_exceptions=True,
            )

    good, bad_doc, bad_dim, good_embed, bad_query, bad_raw = asyncio.run(main())
    np.testing.assert_allclose(good, reranker.score("q", ["good doc"]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(good_embed, embedder.embed(["y"], dim=32), rtol=0, atol=1e-6)
    assert isinstance(bad_doc, TypeError) and "docs[1]" in str(bad_doc)
    assert isinstance(bad_dim, ValueError) and "dim" in str(bad_dim) and "7" in str(bad_dim)
    assert isinstance(bad_query, TypeError) and "query" in str(bad_query)
    assert isinstance(bad_raw, TypeError) and "raw" in str(bad_raw)


def test_a_failing_pass_is_retried_apart(reranker: Reranker, monkeypatch: pytest.MonkeyPatch) -> None:
    original = reranker.score_batch
    calls: list[int] = []

    def score_batch(
        requests: Sequence[ScoreRequest], *, raw: bool = False, tokenized: list | None = None
    ) -> list[np.ndarray]:
        calls.append(len(requests))
        if any(r.query == "poison" for r in requests):
            raise RuntimeError("device fault on the poison request")
        return original(requests, raw=raw, tokenized=tokenized)

    monkeypatch.setattr(reranker, "score_batch", score_batch)
    recorder = Recorder()
    queries = ["alpha", "poison", "gamma", "delta"]

    async def main() -> list[object]:
        async with AsyncEngine(reranker, max_wait_ms=200, observer=recorder) as engine:
            return await asyncio.gather(
                *[engine.score(q, ["doc one", "doc two"]) for q in queries], return_exceptions=True
            )

    results = asyncio.run(main())
    monkeypatch.undo()
    assert calls == [4, 1, 1, 1, 1]  # one merged pass, then each request alone
    assert recorder.retries == [("score", 4)]
    for query, result in zip(queries, results, strict=True):
        if query == "poison":
            assert isinstance(result, RuntimeError) and "poison" in str(result)
        else:
            np.testing.assert_allclose(result, reranker.score(query, ["doc one", "doc two"]), rtol=0, atol=1e-6)


def test_a_cancelled_waiting_request_is_never_computed(reranker: Reranker, monkeypatch: pytest.MonkeyPatch) -> None:
    original = reranker.score_batch
    seen: list[str] = []

    def score_batch(
        requests: Sequence[ScoreRequest], *, raw: bool = False, tokenized: list | None = None
    ) -> list[np.ndarray]:
        seen.extend(r.query for r in requests)
        return original(requests, raw=raw, tokenized=tokenized)

    monkeypatch.setattr(reranker, "score_batch", score_batch)
    recorder = Recorder()

    async def main() -> np.ndarray:
        async with AsyncEngine(reranker, max_wait_ms=300, observer=recorder) as engine:
            doomed = asyncio.ensure_future(engine.score("doomed", ["doc"]))
            await asyncio.sleep(0.05)  # queued, waiting for company
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            return await engine.score("kept", ["doc"])

    kept = asyncio.run(main())
    monkeypatch.undo()
    assert seen == ["kept"]
    assert recorder.cancelled == ["score"]
    np.testing.assert_allclose(kept, reranker.score("kept", ["doc"]), rtol=0, atol=1e-6)


def test_close_finishes_queued_requests_then_refuses_new_ones(reranker: Reranker) -> None:
    async def main() -> list[np.ndarray]:
        engine = AsyncEngine(reranker, max_wait_ms=500)
        pending = [asyncio.ensure_future(engine.score(f"q{i}", ["doc"])) for i in range(5)]
        await asyncio.sleep(0.01)
        await engine.close()  # runs what is queued at once, drops nothing
        results = await asyncio.gather(*pending)
        with pytest.raises(RuntimeError, match="closed"):
            await engine.score("late", ["doc"])
        await engine.close()  # idempotent
        return results

    results = asyncio.run(main())
    for i, result in enumerate(results):
        np.testing.assert_allclose(result, reranker.score(f"q{i}", ["doc"]), rtol=0, atol=1e-6)


def test_empty_inputs_answer_without_a_pass(reranker: Reranker, embedder: Embedder) -> None:
    recorder = Recorder()

    async def main() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncEngine(reranker, embedder, observer=recorder) as engine:
            return await engine.score("q", []), await engine.embed([], dim=32)

    scores, vectors = asyncio.run(main())
    assert scores.shape == (0,) and scores.dtype == np.float32
    assert vectors.shape == (0, 32) and vectors.dtype == np.float32
    assert recorder.batches == []


def test_an_engine_serves_one_event_loop(reranker: Reranker) -> None:
    engine = AsyncEngine(reranker)
    asyncio.run(engine.score("q", ["d"]))
    with pytest.raises(RuntimeError, match="event loop"):
        asyncio.run(engine.score("q", ["d"]))


def test_constructor_arguments_are_checked(reranker: Reranker, embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="neither"):
        AsyncEngine()
    with pytest.raises(TypeError, match=r"reranker must be a qrerank\.Reranker, got Embedder"):
        AsyncEngine(embedder)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"embedder must be a qrerank\.Embedder, got str"):
        AsyncEngine(reranker, "model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_wait_ms must be between 0 and 1000, got -1"):
        AsyncEngine(reranker, max_wait_ms=-1)
    with pytest.raises(TypeError, match="max_wait_ms must be a number, got str"):
        AsyncEngine(reranker, max_wait_ms="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch_sequences must be >= 1, got 0"):
        AsyncEngine(reranker, max_batch_sequences=0)

    async def without_embedder() -> None:
        await AsyncEngine(reranker).embed(["x"])

    with pytest.raises(ValueError, match="no embedder"):
        asyncio.run(without_embedder())


def test_sync_classes_are_safe_from_several_threads(reranker: Reranker, embedder: Embedder) -> None:
    rng = random.Random(1)
    jobs = [(rng.choice(WORDS), _texts(rng, 3)) for _ in range(16)]
    expected_scores = [reranker.score(q, d) for q, d in jobs]
    expected_vectors = [embedder.embed(d) for _, d in jobs]
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def work(i: int) -> None:
        query, docs = jobs[i]
        got[i] = (reranker.score(query, docs), embedder.embed(docs))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == list(range(len(jobs)))
    for i, (scores, vectors) in got.items():
        np.testing.assert_allclose(scores, expected_scores[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(vectors, expected_vectors[i], rtol=0, atol=1e-6)
