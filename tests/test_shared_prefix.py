"""Shared-prefix reuse end to end: the same scores and embeddings as packing every sequence whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qrerank import Embedder, EmbedRequest, Reranker, ScoreRequest, Tokenized
from qrerank.batching import shared_prefix_len
from qrerank.prompts import DEFAULT_RERANK_INSTRUCTION

DOCS = [
    "Tokyo is the capital of Japan.",
    "Kyoto was the capital of Japan for over a thousand years.",
    "The quick brown fox jumps over the lazy dog.",
    "x",
    "",
    "Tokyo is the capital of Japan.",  # a duplicate: identical sequences still keep a token of their own
    "Japan's capital, Tokyo, has about 14 million inhabitants " * 6,
]


@pytest.fixture(scope="module")
def unshared_reranker(reranker_dir: Path) -> Reranker:
    return Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256, share_prefix=False)


@pytest.fixture(scope="module")
def small_budget_reranker(reranker_dir: Path) -> Reranker:
    """A budget that splits one query's documents over several micro-batches, each with the prefix again."""
    return Reranker(reranker_dir, device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=150)


@pytest.mark.parametrize("instruction", [None, "Find the capital"])
def test_shared_prefix_scores_equal_the_plain_path(
    reranker: Reranker, unshared_reranker: Reranker, small_budget_reranker: Reranker, instruction: str | None
) -> None:
    query = "What is the capital of Japan?"
    ids = reranker.prompt.encode([(query, d) for d in DOCS], instruction)
    assert shared_prefix_len(ids) > len(reranker.prompt.prefix_ids) + 5  # template, instruction and query
    plain = unshared_reranker.score(query, DOCS, instruction=instruction, raw=True)
    shared = reranker.score(query, DOCS, instruction=instruction, raw=True)
    split = small_budget_reranker.score(query, DOCS, instruction=instruction, raw=True)
    assert np.ptp(plain) > 1e-3  # distinct scores, so equality below means something
    np.testing.assert_allclose(shared, plain, rtol=0, atol=1e-5)
    np.testing.assert_allclose(split, plain, rtol=0, atol=1e-5)


def test_query_sharing_a_token_with_the_document_boundary_keeps_official_tokens(
    reranker: Reranker, unshared_reranker: Reranker
) -> None:
    """BPE may merge across "<Document>: "; the prefix is cut on the final ids, so every doc keeps its own merge."""
    query = "ends with a colon:"
    docs = [":", "::", " :", "a", ": b"]
    ids = reranker.prompt.encode([(query, d) for d in docs], None)
    # The template text up to the document, tokenized alone, ends in a space token that every document
    # here absorbs into its first token: a prefix cut on text would change the official ids.
    body_head = f"<Instruct>: {DEFAULT_RERANK_INSTRUCTION}\n<Query>: {query}\n<Document>: "
    head = reranker.prompt.prefix_ids + reranker.prompt.tokenizer.encode(body_head, add_special_tokens=False).ids
    assert shared_prefix_len(ids) < len(head)
    assert all(seq[: len(head) - 1] == head[:-1] for seq in ids)
    np.testing.assert_allclose(
        reranker.score(query, docs, raw=True), unshared_reranker.score(query, docs, raw=True), rtol=0, atol=1e-5
    )


def test_score_batch_equals_score_per_request(reranker: Reranker, unshared_reranker: Reranker) -> None:
    requests = [
        ScoreRequest("capital of Japan", DOCS[:3]),
        ScoreRequest("fox", []),
        ScoreRequest("capital of Japan", DOCS, instruction="Judge capitals"),
        ScoreRequest("single", ["only one document"]),
    ]
    batched = reranker.score_batch(requests)
    assert [len(s) for s in batched] == [3, 0, 7, 1]
    for request, scores in zip(requests, batched, strict=True):
        alone = unshared_reranker.score(request.query, request.docs, instruction=request.instruction)
        assert scores.dtype == np.float32
        np.testing.assert_allclose(scores, alone, rtol=0, atol=1e-6)
    assert reranker.score_batch([]) == []


def test_score_pairs_groups_by_query(reranker: Reranker, unshared_reranker: Reranker) -> None:
    pairs = [("q one", DOCS[0]), ("q two", DOCS[1]), ("q one", DOCS[2]), ("q two", DOCS[3]), ("q three", DOCS[4])]
    np.testing.assert_allclose(reranker.score_pairs(pairs), unshared_reranker.score_pairs(pairs), rtol=0, atol=1e-5)


def test_score_batch_rejects_what_is_not_a_request(reranker: Reranker) -> None:
    with pytest.raises(TypeError, match=r"requests\[1\] must be a ScoreRequest, got tuple"):
        reranker.score_batch([ScoreRequest("q", ["d"]), ("q", ["d"])])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"docs\[1\] must be a str, got int"):
        ScoreRequest("q", ["d", 3])  # type: ignore[list-item]


@pytest.fixture(scope="module")
def unshared_embedder(embedding_dir: Path) -> Embedder:
    return Embedder(embedding_dir, device="cpu", dtype=torch.float32, max_length=256, share_prefix=False)


def test_instructed_embeddings_share_the_instruction(embedder: Embedder, unshared_embedder: Embedder) -> None:
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    ids = embedder.prompt.encode(DOCS, instruction)
    assert shared_prefix_len(ids) >= 15
    shared = embedder.embed(DOCS, instruction=instruction)
    plain = unshared_embedder.embed(DOCS, instruction=instruction)
    assert np.abs(shared - plain).max() <= 1e-5


def test_embed_batch_equals_embed_per_request(embedder: Embedder) -> None:
    requests = [
        EmbedRequest(DOCS[:4]),
        EmbedRequest("a single text", instruction="Find it", dim=32),
        EmbedRequest([], dim=48),
        EmbedRequest(DOCS, normalize=False),
    ]
    batched = embedder.embed_batch(requests)
    assert [v.shape for v in batched] == [(4, 64), (1, 32), (0, 48), (7, 64)]
    for request, vectors in zip(requests, batched, strict=True):
        alone = embedder.embed(
            list(request.texts), instruction=request.instruction, dim=request.dim, normalize=request.normalize
        )
        assert vectors.shape == alone.shape
        # Unnormalised vectors reach |x| ~ 3: fp32 GEMMs of other row counts may round their last bit
        # differently (oneDNN picks its blocking by M), so the bound is relative there.
        np.testing.assert_allclose(vectors, alone, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"dim must be between 32 and 64, got 65"):
        embedder.embed_batch([EmbedRequest(["a"]), EmbedRequest(["b"], dim=65)])
    with pytest.raises(TypeError, match=r"requests\[0\] must be an EmbedRequest, got list"):
        embedder.embed_batch([["a"]])  # type: ignore[list-item]


def test_backend_argument_is_validated(reranker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"backend 'cuda' is not one of \('cpu', 'torch', 'triton'\)"):
        Reranker(reranker_dir, device="cpu", backend="cuda")
    with pytest.raises(TypeError, match=r"backend must be a str, got int"):
        Reranker(reranker_dir, device="cpu", backend=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"share_prefix must be a bool, got str"):
        Reranker(reranker_dir, device="cpu", share_prefix="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"backend='triton' does not support dtype torch.float64"):
        Reranker(reranker_dir, device="cpu", backend="triton", dtype=torch.float64)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"set TRITON_INTERPRET=1"):
        Reranker(reranker_dir, device="cpu", backend="triton")


def test_tokenized_given_by_the_caller_is_used_and_checked(reranker: Reranker, embedder: Embedder) -> None:
    requests = [ScoreRequest("capital of Japan", DOCS[:3]), ScoreRequest("fox", DOCS[2:4], instruction="Judge")]
    ids = [reranker.encode(r) for r in requests]
    given = [Tokenized(i) for i in ids]
    for got, want in zip(reranker.score_batch(requests, tokenized=given), reranker.score_batch(requests), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    texts = EmbedRequest(DOCS[:4], instruction="Find it")
    (got,) = embedder.embed_batch([texts], tokenized=[embedder.tokenize(texts)])
    np.testing.assert_allclose(got, embedder.embed(list(texts.texts), instruction="Find it"), rtol=0, atol=1e-6)

    with pytest.raises(ValueError, match=r"tokenized has 1 entries for 2 requests"):
        reranker.score_batch(requests, tokenized=given[:1])
    with pytest.raises(ValueError, match=r"tokenized\[1\] has 1 items for the request's 2 inputs"):
        reranker.score_batch(requests, tokenized=[given[0], Tokenized(ids[1][:1])])
    with pytest.raises(ValueError, match=r"tokenized\[0\].ids\[2\] has 0 tokens; expected 1 to max_length=256"):
        reranker.score_batch(requests, tokenized=[Tokenized([*ids[0][:2], []]), given[1]])
    with pytest.raises(ValueError, match=r"tokenized\[0\].ids\[0\] holds ids outside the vocabulary \[0, 151669\)"):
        reranker.score_batch(requests, tokenized=[Tokenized([[151669], *ids[0][1:]]), given[1]])
    with pytest.raises(ValueError, match=r"tokenized\[0\].ids\[0\] has 300 tokens"):
        embedder.embed_batch([EmbedRequest(["a"])], tokenized=[Tokenized([[1] * 300])])
    with pytest.raises(TypeError, match=r"tokenized\[0\] must be a Tokenized, got list"):
        reranker.score_batch(requests[:1], tokenized=[ids[0]])  # type: ignore[list-item]


def test_several_sequences_of_one_item_reduce_to_their_maximum(reranker: Reranker) -> None:
    request = ScoreRequest("capital of Japan", DOCS[:3])
    ids = reranker.encode(request)
    alone = reranker.score_batch([request], raw=True)[0]
    # document 1 is run as three sequences: its own and those of documents 0 and 2
    windows = Tokenized([ids[0], ids[1], ids[0], ids[2], ids[2]], owners=np.array([0, 1, 1, 1, 2]))
    (got,) = reranker.score_batch([request], raw=True, tokenized=[windows])
    np.testing.assert_allclose(got, [alone[0], alone.max(), alone[2]], rtol=0, atol=1e-6)
    assert windows.slice(1, 3).ids == [ids[1], ids[0], ids[2], ids[2]]
    np.testing.assert_array_equal(windows.slice(1, 3).owners, [0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"owners must give each of the 2 sequences its item"):
        Tokenized([ids[0], ids[1]], owners=np.array([0, 2]))
