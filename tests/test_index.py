"""qrerank.Index on the CPU: search equals topk, adds, texts through the tiny embedder, save/load, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from qrerank import Embedder, safetensors_writer
from qrerank.index import DEFAULT_TASK, Index
from qrerank.similarity import topk

DOCS = ["Tokyo is the capital of Japan.", "Bananas are yellow.", "Kyoto was the capital until 1868.", "", "x y z"]


def vectors(rows: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randint(-3, 4, (rows, dim), generator=torch.Generator().manual_seed(seed)).float()


def test_search_equals_topk_across_adds() -> None:
    first, second, queries = vectors(40, 13, 1), vectors(25, 13, 2), vectors(6, 13, 3)
    index = Index(first, device="cpu")
    index.add(second.numpy())
    assert len(index) == 65 and index.dim == 13 and index.dtype == torch.float32 and index.texts is None
    assert index.vectors.stride(0) % 4 == 0  # rows padded to 16 bytes, so the kernel needs no copy
    scores, indices = index.search(queries, k=30)
    expected = topk(queries, torch.cat([first, second]), 30)
    np.testing.assert_array_equal(indices, expected[1].numpy())
    np.testing.assert_array_equal(scores, expected[0].numpy())
    _, one_indices = index.search(queries[2].numpy(), k=30)  # a single [d] vector
    np.testing.assert_array_equal(one_indices, indices[2:3])


def test_dtype_casts_added_vectors_and_queries() -> None:
    index = Index(vectors(10, 8, 4), device="cpu", dtype=torch.bfloat16)
    assert index.vectors.dtype == torch.bfloat16
    scores, indices = index.search(vectors(2, 8, 5), k=3, as_tensor=True)
    assert isinstance(scores, torch.Tensor) and indices.shape == (2, 3)


def test_texts_through_embedder(embedder: Embedder) -> None:
    index = Index(DOCS[:3], embedder=embedder)
    index.add(DOCS[3:])
    assert index.texts == DOCS and index.dim == embedder.dim and index.device == embedder.device
    np.testing.assert_allclose(index.vectors.numpy(), embedder.embed(DOCS), rtol=0, atol=1e-6)
    query = "capital of Japan"
    _, indices = index.search(query, k=5)
    q = embedder.embed([query], instruction=DEFAULT_TASK)
    expected = np.argsort(-(embedder.embed(DOCS) @ q[0]), kind="stable")
    np.testing.assert_array_equal(indices[0], expected)
    other = index.search([query], k=2, instruction="Find fruit")[1]
    assert other.shape == (1, 2)


def test_matryoshka_dim(embedder: Embedder) -> None:
    index = Index(DOCS, embedder=embedder, dim=32)
    assert index.vectors.shape == (5, 32)
    np.testing.assert_allclose(index.vectors.numpy(), embedder.embed(DOCS, dim=32), rtol=0, atol=1e-6)
    assert index.search("q", k=2)[1].shape == (1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_save_load_round_trip(tmp_path: Path, embedder: Embedder, dtype: torch.dtype) -> None:
    texts = ["naïve café", "", "日本の首都", "plain"]
    index = Index(vectors(4, 20, 6), texts=texts, device="cpu", dtype=dtype)
    index.save(tmp_path / "index.safetensors")
    loaded = Index.load(tmp_path / "index.safetensors", device="cpu")
    assert loaded.texts == texts and loaded.dtype == dtype and loaded.dim == 20
    assert torch.equal(loaded.vectors, index.vectors)
    assert np.array_equal(loaded.search(vectors(3, 20, 7), 4)[1], index.search(vectors(3, 20, 7), 4)[1])
    Index(device="cpu").save(tmp_path / "empty.safetensors")
    assert len(Index.load(tmp_path / "empty.safetensors")) == 0
    with_embedder = Index(DOCS, embedder=embedder)
    with_embedder.save(tmp_path / "texts.safetensors")
    reloaded = Index.load(tmp_path / "texts.safetensors", embedder=embedder)
    assert np.array_equal(reloaded.search("capital", 3)[1], with_embedder.search("capital", 3)[1])


def test_load_refuses_other_files(tmp_path: Path) -> None:
    save_file({"vectors": torch.ones(2, 2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match=r"is not a saved qrerank\.Index"):
        Index.load(tmp_path / "plain.safetensors")
    meta = {"format": "qrerank.Index/1", "dim": "2"}
    save_file({"vectors": torch.ones(2, 2), "extra": torch.ones(1)}, str(tmp_path / "extra.safetensors"), meta)
    with pytest.raises(ValueError, match=r"holds tensors \['extra', 'vectors'\]"):
        Index.load(tmp_path / "extra.safetensors")
    bad = {"vectors": torch.ones(2, 2), "texts_utf8": torch.zeros(3, dtype=torch.uint8)}
    save_file({**bad, "text_offsets": torch.tensor([0, 2, 1])}, str(tmp_path / "offsets.safetensors"), meta)
    with pytest.raises(ValueError, match="text_offsets do not describe 2 texts"):
        Index.load(tmp_path / "offsets.safetensors")


# Saves a new index over argv[1], stalling once every byte is written but before the rename.
SAVE_THEN_STALL = """
import signal, sys, time, torch
from qrerank import safetensors_writer
from qrerank.index import Index

# A process started in the background by a non-interactive shell inherits SIGINT ignored, and Python then
# leaves it so: restore Ctrl-C's KeyboardInterrupt, which is what this test sends.
signal.signal(signal.SIGINT, signal.default_int_handler)

def stall(fd):
    print("written", flush=True)
    time.sleep(120)

safetensors_writer.os.fsync = stall
Index(torch.zeros(5000, 64), device="cpu").save(sys.argv[1])
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_save_killed_midway_keeps_the_old_file(tmp_path: Path, sig: signal.Signals) -> None:
    path = tmp_path / "index.safetensors"
    old = Index(vectors(7, 5, 9), texts=list("abcdefg"), device="cpu")
    old.save(path)
    child = subprocess.Popen([sys.executable, "-c", SAVE_THEN_STALL, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "written\n"
        child.send_signal(sig)
        assert child.wait(timeout=60) != 0
    finally:
        child.kill()
    loaded = Index.load(path)
    assert torch.equal(loaded.vectors, old.vectors) and loaded.texts == old.texts
    others = sorted(p.name for p in tmp_path.iterdir() if p != path)
    if sig == signal.SIGINT:  # an exception: the temporary file is removed
        assert others == []
    else:  # SIGKILL runs no cleanup: what it leaves is recognisably a temporary of this file
        assert len(others) == 1 and others[0].startswith(".index.safetensors.") and others[0].endswith(".tmp")


def test_failed_save_keeps_the_old_file_and_removes_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "index.safetensors"
    Index(vectors(3, 4, 1), device="cpu").save(path)
    before = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors_writer.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        Index(vectors(9, 4, 2), device="cpu").save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["index.safetensors"]


def test_saved_file_has_the_mode_of_a_new_file(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        Index(vectors(2, 3, 1), device="cpu").save(tmp_path / "index.safetensors")
    finally:
        os.umask(umask)
    assert (tmp_path / "index.safetensors").stat().st_mode & 0o777 == 0o640  # 0o666 less the umask, not 0o600


META = {"format": "qrerank.Index/1", "dim": "2"}
TEXTS = {"texts_utf8": torch.tensor(list(b"abc"), dtype=torch.uint8), "text_offsets": torch.tensor([0, 1, 3])}


def _save(tensors: dict[str, torch.Tensor], metadata: dict[str, str] = META) -> Callable[[Path], None]:
    return lambda path: save_file(tensors, str(path), metadata)


def _damage(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        Index(vectors(2, 2, 1), texts=["a", "bc"], device="cpu").save(path)
        path.write_bytes(edit(path.read_bytes()))

    return write


BAD_FILES: list[Any] = [
    pytest.param(_damage(lambda b: b[: len(b) - 5]), r"is not a readable safetensors file", id="truncated"),
    pytest.param(_damage(lambda b: b[:8] + b"\xff" * 16 + b[24:]), r"is not a readable safetensors file", id="corrupt"),
    pytest.param(_damage(lambda b: b""), r"is not a readable safetensors file", id="empty"),
    pytest.param(
        _save({"vectors": torch.ones(2, 2), **TEXTS, "text_offsets": torch.tensor([0.0, 1.0, 3.0])}),
        r"text_offsets must be int64, got torch\.float32",
        id="float-offsets",
    ),
    pytest.param(
        _save({"vectors": torch.ones(2, 2), **TEXTS, "texts_utf8": torch.tensor([97, 98, 99], dtype=torch.int32)}),
        r"texts_utf8 must be uint8 bytes, got torch\.int32",
        id="texts-int32",
    ),
    pytest.param(
        _save(
            {"vectors": torch.ones(2, 2), **TEXTS, "texts_utf8": torch.tensor(list(b"\xff\xfe\xfd"), dtype=torch.uint8)}
        ),
        r"texts_utf8 is not UTF-8 text",
        id="texts-not-utf8",
    ),
    pytest.param(
        _save({"vectors": torch.ones(2, 2), **TEXTS, "text_offsets": torch.tensor([0, 1, 2])}),
        r"text_offsets end at byte 2, but texts_utf8 has 3 bytes",
        id="offsets-short",
    ),
    pytest.param(
        _save({"vectors": torch.ones(2, 2)}, {**META, "dim": "two"}),
        r"dim must be a non-negative integer, got 'two'",
        id="dim-word",
    ),
    pytest.param(
        _save({"vectors": torch.ones(2, 2)}, {**META, "dim": "2.0"}),
        r"dim must be a non-negative integer",
        id="dim-float",
    ),
    pytest.param(
        _save({"vectors": torch.ones(2, 2)}, {**META, "dim": "9" * 5000}),
        r"dim must be a non-negative integer",
        id="dim-huge",
    ),
    pytest.param(
        _save({"vectors": torch.ones(2, 2)}, {"format": "qrerank.Index/1"}),
        r"dim must be a non-negative integer, got ''",
        id="no-dim",
    ),
    pytest.param(
        _save({"vectors": torch.ones(2, 3)}), r"vectors of shape \[2, 3\] disagree with dim 2", id="dim-disagrees"
    ),
    pytest.param(
        _save({"vectors": torch.ones(4)}), r"vectors must be a float32/bfloat16/float16 matrix", id="vectors-1d"
    ),
    pytest.param(_save({"vectors": torch.ones(2, 2, dtype=torch.int64)}), r"got torch\.int64", id="vectors-int"),
    pytest.param(lambda path: path.mkdir(), r"is a directory", id="directory"),
]


@pytest.mark.parametrize(("write", "message"), BAD_FILES)
def test_load_refuses_damaged_files(tmp_path: Path, write: Callable[[Path], None], message: str) -> None:
    path = tmp_path / "index.safetensors"
    write(path)
    with pytest.raises(ValueError, match=message) as info:
        Index.load(path)
    assert str(path) in str(info.value)


TWO = vectors(3, 4, 8)
BAD_CALLS: list[Any] = [
    pytest.param(lambda: Index(TWO).add(torch.ones(2, 5)), ValueError, r"dimension 4 \(the index's\), got \(2, 5\)"),
    pytest.param(lambda: Index(TWO).search(torch.ones(1, 5)), ValueError, r"queries must have dimension 4"),
    pytest.param(lambda: Index(TWO).search(TWO, k=0), ValueError, r"k must be between 1 and 1024, got 0"),
    pytest.param(lambda: Index(TWO).search(TWO, k=2000), ValueError, r"k must be between 1 and 1024, got 2000"),
    pytest.param(lambda: Index(TWO).search("text"), ValueError, r"embedding texts needs an embedder"),
    pytest.param(lambda: Index(["a"]), ValueError, r"embedding texts needs an embedder"),
    pytest.param(lambda: Index(TWO).search([1.0, 2.0]), TypeError, r"queries\[0\] must be a str, got float"),
    pytest.param(lambda: Index(TWO, texts=["a"]), ValueError, r"texts has 1 entries for 3 embeddings"),
    pytest.param(lambda: Index(texts=["a"]), ValueError, r"texts were given without the embeddings"),
    pytest.param(lambda: Index(TWO).add(TWO, texts=["a"] * 3), ValueError, r"this index has no texts"),
    pytest.param(lambda: Index(TWO, texts=list("abc")).add(TWO), ValueError, r"has a text for every vector"),
    pytest.param(
        lambda: Index(torch.tensor([[float("nan"), 1.0]])), ValueError, r"embeddings contains NaN", id="nan-add"
    ),
    pytest.param(lambda: Index(TWO).search(torch.full((1, 4), float("inf"))), ValueError, r"queries contains an inf"),
    pytest.param(lambda: Index(TWO, dtype=torch.float64), ValueError, r"dtype must be torch.float32, bfloat16"),
    pytest.param(lambda: Index(TWO, embedder="model"), TypeError, r"embedder must be a qrerank.Embedder, got str"),
    pytest.param(lambda: Index(TWO, device="tpu"), ValueError, r"device 'tpu' is not a device name"),
    pytest.param(lambda: Index(TWO).search(TWO, as_tensor=1), TypeError, r"as_tensor must be a bool, got int"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_bad_input(call: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()
