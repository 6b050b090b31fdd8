"""Long documents: max_chunks_per_doc scores windows of a document's tokens (the best one wins), and
max_tokens_per_doc cuts a document's own tokens; both through score, rank, score_pairs and score_batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from qrerank import AsyncEngine, Reranker, ScoreRequest, Tokenized
from qrerank.prompts import DEFAULT_RERANK_INSTRUCTION, RERANK_HEAD
from qrerank.serving.tokens import TokenCounter

QUERY = "Where is the Eiffel tower?"
LONG = (
    "Bananas are yellow and grow in bunches. " * 40
    + "The Eiffel tower stands in Paris, on the Champ de Mars. "
    + "Rivers flow to the sea. " * 60
)
DOCS = ["Short: the tower is in Paris.", LONG, "", LONG[::-1]]


@pytest.fixture(scope="module")
def unshared(reranker_dir: Path) -> Reranker:
    return Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256, share_prefix=False)


@pytest.fixture(scope="module")
def small_batches(reranker_dir: Path) -> Reranker:
    """Micro-batches of 300 tokens: one request's windows run over many of them."""
    return Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=300)


def _expected_windows(reranker: Reranker, doc: str, chunks: int | None, max_tokens: int | None) -> list[list[int]]:
    """prefix + head + consecutive windows of the document's own tokens + suffix, built from plain encodes."""
    prompt, tokenizer = reranker.prompt, reranker.prompt.tokenizer
    head_text = RERANK_HEAD.format(instruction=DEFAULT_RERANK_INSTRUCTION, query=QUERY)
    head = tokenizer.encode(head_text, add_special_tokens=False).ids
    own = tokenizer.encode(" " + doc, add_special_tokens=False).ids[:max_tokens]
    room = prompt.body_budget - len(head)
    starts = range(0, len(own), room)[: chunks or 1]
    return [prompt.prefix_ids + head + own[start : start + room] + prompt.suffix_ids for start in starts]


@pytest.mark.parametrize(("chunks", "max_tokens"), [(None, None), (5, None), (2, None), (None, 40), (3, 200)])
def test_windows_of_the_documents_own_tokens(reranker: Reranker, chunks: int | None, max_tokens: int | None) -> None:
    tokenized = reranker.tokenize(ScoreRequest(QUERY, DOCS, None, chunks, max_tokens))
    expected = [_expected_windows(reranker, doc, chunks, max_tokens) for doc in DOCS]
    assert list(tokenized.ids) == [w for windows in expected for w in windows]
    assert tokenized.items == len(DOCS) and (tokenized.owners is None) == (chunks is None)
    if chunks is not None:
        assert list(tokenized.owners) == [item for item, windows in enumerate(expected) for _ in windows]
    if max_tokens is None:  # the first window is the recipe's truncation
        assert [windows[0] for windows in expected] == reranker.encode(ScoreRequest(QUERY, DOCS))
    assert [len(windows) for windows in expected] == {
        (None, None): [1, 1, 1, 1], (5, None): [1, 5, 1, 5], (2, None): [1, 2, 1, 2], (None, 40): [1, 1, 1, 1],
        (3, 200): [1, 2, 1, 2],
    }[chunks, max_tokens]  # fmt: skip


def test_chunked_score_is_the_best_window_scored_alone(
    reranker: Reranker, unshared: Reranker, small_batches: Reranker
) -> None:
    request = ScoreRequest(QUERY, DOCS, max_chunks_per_doc=5)
    tokenized = reranker.tokenize(request)
    windows = np.array(
        [
            reranker.score_batch([ScoreRequest(QUERY, ["x"])], raw=True, tokenized=[Tokenized([s])])[0][0]
            for s in tokenized.ids
        ]
    )  # each window in a pass of its own
    expected = np.array([windows[tokenized.owners == item].max() for item in range(len(DOCS))])
    for model in (reranker, unshared, small_batches):  # shared prefix or not, many micro-batches or few
        got = model.score(QUERY, DOCS, raw=True, max_chunks_per_doc=5)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert not np.allclose(expected, reranker.score(QUERY, DOCS, raw=True))  # the windows mattered


def test_every_entry_point_takes_the_long_document_options(reranker: Reranker) -> None:
    options = {"max_chunks_per_doc": 3, "max_tokens_per_doc": 300}
    tokenized = reranker.tokenize(ScoreRequest(QUERY, DOCS, None, 3, 300))
    expected = reranker.score_batch([ScoreRequest(QUERY, DOCS)], tokenized=[tokenized])[0]
    np.testing.assert_allclose(reranker.score(QUERY, DOCS, **options), expected, rtol=0, atol=1e-6)
    pairs = [(QUERY, d) for d in DOCS]
    np.testing.assert_allclose(reranker.score_pairs(pairs, **options), expected, rtol=0, atol=1e-6)
    ranked = reranker.rank(QUERY, DOCS, **options)
    assert [r["index"] for r in ranked] == list(np.argsort(-expected, kind="stable"))
    capped = reranker.tokenize(ScoreRequest(QUERY, DOCS, None, None, 40))  # no chunks: the pipelined path
    np.testing.assert_allclose(
        reranker.score(QUERY, DOCS, max_tokens_per_doc=40),
        reranker.score_batch([ScoreRequest(QUERY, DOCS)], tokenized=[capped])[0],
        rtol=0,
        atol=1e-6,
    )


def test_long_document_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"max_chunks_per_doc must be >= 1, got 0"):
        ScoreRequest(QUERY, DOCS, max_chunks_per_doc=0)
    with pytest.raises(TypeError, match=r"max_tokens_per_doc must be an int, got str"):
        ScoreRequest(QUERY, DOCS, max_tokens_per_doc="9")  # type: ignore[arg-type]


def test_a_server_gets_windows_without_knowing_them(reranker: Reranker) -> None:
    """The server's token counter makes the windows; AsyncEngine runs them like any other sequences."""
    request = ScoreRequest(QUERY, DOCS, max_chunks_per_doc=5)
    tokenized = TokenCounter(reranker).score_tokens(request, truncate=False, field="documents")

    async def main() -> np.ndarray:
        async with AsyncEngine(reranker, max_wait_ms=0) as engine:
            return await engine.score(QUERY, DOCS, raw=True, tokenized=tokenized)

    expected = reranker.score(QUERY, DOCS, raw=True, max_chunks_per_doc=5)
    np.testing.assert_allclose(asyncio.run(main()), expected, rtol=0, atol=1e-6)
