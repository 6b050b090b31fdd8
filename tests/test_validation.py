"""Bad arguments at the public API raise TypeError/ValueError naming the argument; valid edge cases behave."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qrerank import Embedder, Reranker

QUERY = "what is the capital of Japan"
DOCS = ["Tokyo is the capital of Japan.", "Bananas are yellow.", "Kyoto was the capital until 1868."]

RERANKER_CALLS: list[Any] = [
    pytest.param(lambda r: r.score(5, DOCS), TypeError, r"query must be a str, got int", id="query-int"),
    pytest.param(lambda r: r.score(None, DOCS), TypeError, r"query must be a str, got None", id="query-none"),
    pytest.param(lambda r: r.score(QUERY, "a doc"), TypeError, r"docs must be a list of str.*bare str", id="docs-str"),
    pytest.param(lambda r: r.score(QUERY, None), TypeError, r"docs must be a list of str, got None", id="docs-none"),
    pytest.param(lambda r: r.score(QUERY, 7), TypeError, r"docs must be a list of str, got int", id="docs-int"),
    pytest.param(
        lambda r: r.score(QUERY, ["a", "b", None]), TypeError, r"docs\[2\] must be a str, got None", id="docs-item-none"
    ),
    pytest.param(
        lambda r: r.score(QUERY, ["a", 3]), TypeError, r"docs\[1\] must be a str, got int", id="docs-item-int"
    ),
    pytest.param(
        lambda r: r.score_pairs("q d"), TypeError, r"pairs must be a list of \(query, document\)", id="pairs-str"
    ),
    pytest.param(lambda r: r.score_pairs(None), TypeError, r"pairs must be a list", id="pairs-none"),
    pytest.param(
        lambda r: r.score_pairs(["qd"]), TypeError, r"pairs\[0\] must be a \(query, document\) pair", id="pair-str"
    ),
    pytest.param(
        lambda r: r.score_pairs([("q", "d"), ("q",)]),
        TypeError,
        r"pairs\[1\] must be a \(query, document\)",
        id="pair-short",
    ),
    pytest.param(
        lambda r: r.score_pairs([("q", "d", "x")]),
        TypeError,
        r"pairs\[0\] must be a \(query, document\)",
        id="pair-long",
    ),
    pytest.param(
        lambda r: r.score_pairs([("q", "d"), ("q", 1)]),
        TypeError,
        r"pairs\[1\]\[1\] must be a str, got int",
        id="pair-doc-int",
    ),
    pytest.param(
        lambda r: r.score_pairs([(None, "d")]),
        TypeError,
        r"pairs\[0\]\[0\] must be a str, got None",
        id="pair-query-none",
    ),
    pytest.param(lambda r: r.rank(QUERY, DOCS, top_k=0), ValueError, r"top_k must be >= 1, got 0", id="top_k-0"),
    pytest.param(lambda r: r.rank(QUERY, DOCS, top_k=-2), ValueError, r"top_k must be >= 1, got -2", id="top_k-neg"),
    pytest.param(
        lambda r: r.rank(QUERY, DOCS, top_k=1.0), TypeError, r"top_k must be an int, got float", id="top_k-float"
    ),
    pytest.param(lambda r: r.rank(QUERY, DOCS, top_k="2"), TypeError, r"top_k must be an int, got str", id="top_k-str"),
    pytest.param(
        lambda r: r.rank(QUERY, DOCS, top_k=True), TypeError, r"top_k must be an int, got bool", id="top_k-bool"
    ),
    pytest.param(
        lambda r: r.rank(QUERY, DOCS, return_documents=1),
        TypeError,
        r"return_documents must be a bool",
        id="return_documents-int",
    ),
    pytest.param(lambda r: r.rank(5, DOCS), TypeError, r"query must be a str", id="rank-query-int"),
    pytest.param(lambda r: r.score(QUERY, DOCS, raw=1), TypeError, r"raw must be a bool, got int", id="raw-int"),
    pytest.param(
        lambda r: r.score(QUERY, [], raw="yes"), TypeError, r"raw must be a bool, got str", id="raw-str-empty"
    ),
    pytest.param(
        lambda r: r.score_pairs([("q", "d")], raw=None), TypeError, r"raw must be a bool, got None", id="pairs-raw-none"
    ),
    pytest.param(
        lambda r: r.score(QUERY, DOCS, instruction=3),
        TypeError,
        r"instruction must be a str, got int",
        id="instruction-int",
    ),
    pytest.param(
        lambda r: r.score(QUERY, [], instruction=["x"]),
        TypeError,
        r"instruction must be a str, got list",
        id="instruction-list-empty",
    ),
    pytest.param(
        lambda r: r.rank(QUERY, DOCS, instruction=b"x"),
        TypeError,
        r"instruction must be a str, got bytes",
        id="rank-instruction-bytes",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), RERANKER_CALLS)
def test_reranker_rejects(reranker: Reranker, call: Callable[[Reranker], Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call(reranker)


EMBEDDER_CALLS: list[Any] = [
    pytest.param(lambda e: e.embed(None), TypeError, r"texts must be a list of str, got None", id="texts-none"),
    pytest.param(lambda e: e.embed(3), TypeError, r"texts must be a list of str, got int", id="texts-int"),
    pytest.param(lambda e: e.embed(b"bytes"), TypeError, r"texts must be a list of str.*bare bytes", id="texts-bytes"),
    pytest.param(
        lambda e: e.embed(["a", "b", "c", 4]), TypeError, r"texts\[3\] must be a str, got int", id="texts-item-int"
    ),
    pytest.param(
        lambda e: e.embed(["a", None]), TypeError, r"texts\[1\] must be a str, got None", id="texts-item-none"
    ),
    pytest.param(lambda e: e.embed(["a"], dim=0), ValueError, r"dim must be between 32 and 64, got 0", id="dim-0"),
    pytest.param(lambda e: e.embed(["a"], dim=65), ValueError, r"dim must be between 32 and 64, got 65", id="dim-65"),
    pytest.param(lambda e: e.embed(["a"], dim=31), ValueError, r"dim must be between 32 and 64, got 31", id="dim-31"),
    pytest.param(lambda e: e.embed(["a"], dim=-32), ValueError, r"dim must be between 32 and 64", id="dim-neg"),
    pytest.param(lambda e: e.embed(["a"], dim=32.0), TypeError, r"dim must be an int, got float", id="dim-float"),
    pytest.param(lambda e: e.embed(["a"], dim="32"), TypeError, r"dim must be an int, got str", id="dim-str"),
    pytest.param(lambda e: e.embed(["a"], dim=True), TypeError, r"dim must be an int, got bool", id="dim-bool"),
    pytest.param(
        lambda e: e.embed(["a"], normalize=1), TypeError, r"normalize must be a bool, got int", id="normalize-int"
    ),
    pytest.param(
        lambda e: e.embed([], normalize=None),
        TypeError,
        r"normalize must be a bool, got None",
        id="normalize-none-empty",
    ),
    pytest.param(
        lambda e: e.embed(["a"], as_tensor="no"), TypeError, r"as_tensor must be a bool, got str", id="as_tensor-str"
    ),
    pytest.param(
        lambda e: e.embed(["a"], show_progress=0),
        TypeError,
        r"show_progress must be a bool, got int",
        id="show_progress-int",
    ),
    pytest.param(
        lambda e: e.embed(["a"], instruction=1), TypeError, r"instruction must be a str, got int", id="instruction-int"
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), EMBEDDER_CALLS)
def test_embedder_rejects(embedder: Embedder, call: Callable[[Embedder], Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call(embedder)


CONSTRUCTOR_ARGS: list[Any] = [
    pytest.param(dict(device="tpu"), ValueError, r"device 'tpu'", id="device-tpu"),
    pytest.param(dict(device="meta"), ValueError, r"device 'meta' is not supported", id="device-meta"),
    pytest.param(dict(device=3), TypeError, r"device must be a str or torch.device, got int", id="device-int"),
    pytest.param(dict(dtype=torch.int64), ValueError, r"dtype torch.int64 is not supported", id="dtype-int64"),
    pytest.param(dict(dtype="int8"), ValueError, r"dtype 'int8' is not a float dtype name", id="dtype-int8-str"),
    pytest.param(dict(dtype=5), TypeError, r"dtype must be a torch.dtype or str, got int", id="dtype-int"),
    pytest.param(dict(max_length=0), ValueError, r"max_length must be >= 1, got 0", id="max_length-0"),
    pytest.param(dict(max_length="10"), TypeError, r"max_length must be an int, got str", id="max_length-str"),
    pytest.param(
        dict(max_batch_tokens=0), ValueError, r"max_batch_tokens must be >= 1, got 0", id="max_batch_tokens-0"
    ),
    pytest.param(
        dict(max_batch_tokens=1.5),
        TypeError,
        r"max_batch_tokens must be an int, got float",
        id="max_batch_tokens-float",
    ),
]


@pytest.mark.parametrize("cls", [Reranker, Embedder])
@pytest.mark.parametrize(("kwargs", "error", "message"), CONSTRUCTOR_ARGS)
def test_constructor_rejects(reranker_dir: Path, cls: type, kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        cls(reranker_dir, **{"device": "cpu", **kwargs})


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7", torch.device("cuda")])
def test_cuda_device_when_cuda_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, reranker_dir: Path, device: str | torch.device
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device .*cuda.* CUDA is not available"):
        Reranker(reranker_dir, device=device)


def test_cuda_device_index_that_does_not_exist(monkeypatch: pytest.MonkeyPatch, embedding_dir: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device 'cuda:7' does not exist: 1 CUDA device"):
        Embedder(embedding_dir, device="cuda:7")


def test_max_length_below_the_reranker_template(reranker_dir: Path, reranker: Reranker) -> None:
    minimum = len(reranker.prompt.prefix_ids) + len(reranker.prompt.suffix_ids) + 1
    with pytest.raises(ValueError, match=rf"max_length={minimum - 1} is too small.*at least {minimum}"):
        Reranker(reranker_dir, device="cpu", max_length=minimum - 1)
    smallest = Reranker(reranker_dir, device="cpu", max_length=minimum)
    [ids] = smallest.prompt.encode([(QUERY, DOCS[0])], None)
    assert len(ids) == minimum and ids[-len(reranker.prompt.suffix_ids) :] == reranker.prompt.suffix_ids
    assert np.isfinite(smallest.score(QUERY, DOCS)).all()


@pytest.mark.parametrize(("cls", "fixture"), [(Reranker, "reranker_dir"), (Embedder, "embedding_dir")])
def test_max_length_beyond_max_position_embeddings(request: pytest.FixtureRequest, cls: type, fixture: str) -> None:
    with pytest.raises(ValueError, match=r"max_length=40961 exceeds the model's max_position_embeddings \(40960\)"):
        cls(request.getfixturevalue(fixture), device="cpu", max_length=40961)


def test_empty_inputs(reranker: Reranker, embedder: Embedder) -> None:
    for scores in (reranker.score(QUERY, []), reranker.score(QUERY, [], raw=True), reranker.score_pairs([])):
        assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (0,)
    assert reranker.rank(QUERY, []) == []
    vectors = embedder.embed([])
    assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.shape == (0, 64)
    assert embedder.embed([], dim=32).shape == (0, 32)
    tensor = embedder.embed([], as_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (0, 64)


def test_empty_strings_are_valid(reranker: Reranker, embedder: Embedder) -> None:
    scores = reranker.score("", ["", "x", ""])
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert abs(scores[0] - scores[2]) <= 1e-6
    assert reranker.score_pairs([("", "")]).shape == (1,)
    vectors = embedder.embed(["", "x"])
    assert vectors.shape == (2, 64) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(""), vectors[:1], rtol=0, atol=1e-6)


def test_single_string_embeds_as_one_row(embedder: Embedder) -> None:
    one = embedder.embed("Tokyo is the capital of Japan.")
    assert isinstance(one, np.ndarray) and one.dtype == np.float32 and one.shape == (1, 64)
    np.testing.assert_allclose(one, embedder.embed(["Tokyo is the capital of Japan."]), rtol=0, atol=1e-6)


def test_score_shape_and_order(reranker: Reranker) -> None:
    scores = reranker.score(QUERY, DOCS)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert ((scores > 0) & (scores < 1)).all()
    reversed_scores = reranker.score(QUERY, DOCS[::-1])
    np.testing.assert_allclose(reversed_scores, scores[::-1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(reranker.score_pairs([(QUERY, d) for d in DOCS]), scores, rtol=0, atol=1e-6)
    assert np.ptp(scores) > 1e-4  # distinct scores, so the order checks above mean something


def test_rank_orders_best_first_and_breaks_ties_by_index(reranker: Reranker) -> None:
    docs = ["Bananas are yellow.", "Tokyo is the capital of Japan.", "Kyoto", "Bananas are yellow.", "Osaka castle"]
    scores = reranker.score(QUERY, docs)
    assert scores[0] == scores[3] and len(set(scores.tolist())) == 4  # exactly one tie, between docs 0 and 3
    ranked = reranker.rank(QUERY, docs)
    expected = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
    assert [r["index"] for r in ranked] == expected
    order = [r["index"] for r in ranked]
    assert order.index(0) + 1 == order.index(3)
    assert [r["score"] for r in ranked] == [float(scores[i]) for i in expected]
    assert all(set(r) == {"index", "score"} and isinstance(r["index"], int) for r in ranked)

    top = reranker.rank(QUERY, docs, top_k=2, return_documents=True)
    assert [r["index"] for r in top] == expected[:2]
    assert all(set(r) == {"index", "score", "document"} and r["document"] == docs[r["index"]] for r in top)
    assert len(reranker.rank(QUERY, docs, top_k=10)) == len(docs)
    assert [r["index"] for r in reranker.rank(QUERY, tuple(docs), top_k=1)] == expected[:1]


def test_raw_is_the_logit_of_the_score(reranker: Reranker) -> None:
    docs = [*DOCS, "", "yes", "no " * 30]
    scores = reranker.score(QUERY, docs)
    raw = reranker.score(QUERY, docs, raw=True)
    assert raw.dtype == np.float32 and raw.shape == scores.shape
    assert ((scores > 0.01) & (scores < 0.99)).all()  # moderate scores: the logit is well conditioned
    logits = torch.special.logit(torch.from_numpy(scores).double()).numpy()
    np.testing.assert_allclose(raw, logits, rtol=0, atol=1e-4)
    assert not np.allclose(raw, scores)
    np.testing.assert_allclose(reranker.score_pairs([(QUERY, d) for d in docs], raw=True), raw, rtol=0, atol=1e-6)


def test_instruction_changes_scores(reranker: Reranker) -> None:
    default = reranker.score(QUERY, DOCS)
    custom = reranker.score(QUERY, DOCS, instruction="Find documents about fruit")
    assert np.abs(default - custom).max() > 1e-5


def test_as_tensor_returns_a_tensor_on_the_engine_device(embedder: Embedder) -> None:
    texts = ["Tokyo", "Kyoto is old"]
    tensor = embedder.embed(texts, as_tensor=True)
    assert isinstance(tensor, torch.Tensor)
    assert tensor.device == embedder.device == embedder.engine.options.device
    assert tensor.dtype == torch.float32 and tensor.shape == (2, 64)
    np.testing.assert_array_equal(tensor.numpy(), embedder.embed(texts))


def test_matryoshka_dim_is_the_normalised_prefix(embedder: Embedder) -> None:
    texts = ["Tokyo is the capital of Japan.", "Bananas are yellow.", ""]
    full = embedder.embed(texts, normalize=False)
    assert full.shape == (3, 64)
    assert np.abs(np.linalg.norm(full, axis=1) - 1).max() > 0.1  # really unnormalised
    short = embedder.embed(texts, dim=32)
    assert short.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
    prefix = full[:, :32]
    np.testing.assert_allclose(short, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), rtol=0, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(texts, dim=32, normalize=False), prefix, rtol=0, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(texts, dim=64), embedder.embed(texts), rtol=0, atol=1e-6)
    normalized = embedder.embed(texts)
    np.testing.assert_allclose(normalized, full / np.linalg.norm(full, axis=1, keepdims=True), rtol=0, atol=1e-6)


def test_instruction_formats_embedding_queries(embedder: Embedder) -> None:
    instruction = "Given a question, retrieve passages"
    [ids] = embedder.prompt.encode(["capital of Japan"], instruction)
    expected = embedder.prompt.tokenizer.encode(
        f"Instruct: {instruction}\nQuery:capital of Japan", add_special_tokens=False
    ).ids
    assert ids == [*expected, embedder.prompt.eos_id]
    np.testing.assert_allclose(
        embedder.embed(["capital of Japan"], instruction=instruction),
        embedder.embed([f"Instruct: {instruction}\nQuery:capital of Japan"]),
        rtol=0,
        atol=1e-6,
    )
