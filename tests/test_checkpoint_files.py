"""Hostile or broken checkpoint files: each refused fast with a ValueError naming the file, nothing hangs or leaks out.

A FIFO is the nastiest case: a plain open() waits for a writer forever. Each FIFO test arms a writer
that unblocks the FIFO after a few seconds, so that code that does wait fails the test instead of
hanging the suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from qrerank import Embedder, Index, Reranker, checkpoint
from qrerank.safetensors_reader import read_header
from qrerank.testing import random_checkpoint

LOAD = dict(device="cpu", dtype=torch.float32, max_length=256, max_batch_tokens=512)
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "9" * 5000  # past Python's 4300-digit limit for int(): json.loads raises a bare ValueError


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("sharded"), "tiny", "reranker", seed=1, shards=2)


def clone(src: Path, dst: Path) -> Path:
    """A copy the test may edit; the big files are linked (tests replace them, never write into them)."""
    dst.mkdir()
    for file in src.iterdir():
        if file.suffix == ".safetensors" or file.name == "tokenizer.json":
            (dst / file.name).symlink_to(file)
        else:
            shutil.copy(file, dst)
    return dst


def replace_json_text(path: Path, edit: Callable[[str], str]) -> None:
    path.write_text(edit(path.read_text()))


def _config_text(key: str, value: str) -> Callable[[str], str]:
    """Set `key` to the raw JSON text `value` (which json.dumps could not write: NaN, a 5,000-digit integer)."""

    def edit(text: str) -> str:
        config = json.loads(text)
        config[key] = "@@"
        return json.dumps(config).replace('"@@"', value)

    return edit


def expect_refusal(make: Callable[[], Any], message: str, file: Path) -> None:
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert str(file) in str(info.value)


# ---------------------------------------------------------------- config.json


CONFIG_TEXTS: list[Any] = [
    pytest.param(
        "num_hidden_layers", "1000000", r"num_hidden_layers must be an integer from 1 to 1024", id="layers-1e6"
    ),
    pytest.param("hidden_size", "1000000000", r"hidden_size must be an integer from 1 to 65536", id="hidden-1e9"),
    pytest.param("vocab_size", HUGE_INT, r"not valid JSON \(.*digits", id="5000-digits"),
    pytest.param("max_position_embeddings", "9" * 400, r"an integer of 1329 bits", id="400-digits"),
    pytest.param("rope_theta", "9" * 400, r"rope_theta must be a finite number > 0, got an integer", id="theta-huge"),
    pytest.param("rms_norm_eps", "NaN", r"rms_norm_eps must be a finite number > 0, got nan", id="eps-nan"),
    pytest.param("rms_norm_eps", "-1e-6", r"rms_norm_eps must be a finite number > 0", id="eps-negative"),
    pytest.param("rope_theta", "Infinity", r"rope_theta must be a finite number > 0, got inf", id="theta-inf"),
    pytest.param("rope_theta", "0", r"rope_theta must be a finite number > 0, got 0\.0", id="theta-0"),
    pytest.param("rope_scaling", DEEP, r"not valid JSON \(nested too deeply\)", id="deep"),
    pytest.param("rope_parameters", "[1]", r"rope_parameters must be an object", id="rope-list"),
    pytest.param("tie_word_embeddings", '"false"', r"tie_word_embeddings must be true or false", id="tie-str"),
    pytest.param("architectures", '"Qwen3Model"', r"architectures must be a list", id="arch-str"),
]


@pytest.mark.parametrize(("key", "value", "message"), CONFIG_TEXTS)
def test_hostile_config_is_refused_at_once(
    reranker_dir: Path, tmp_path: Path, key: str, value: str, message: str
) -> None:
    path = clone(reranker_dir, tmp_path / "ckpt")
    replace_json_text(path / "config.json", _config_text(key, value))
    start = time.perf_counter()
    expect_refusal(lambda: Reranker(path, **LOAD), message, path / "config.json")
    assert time.perf_counter() - start < 5  # today 1e6 layers took 25 s and 4.7 GB to fail


def test_layers_beyond_the_stored_ones_are_refused_before_the_tensor_table(reranker_dir: Path, tmp_path: Path) -> None:
    path = clone(reranker_dir, tmp_path / "ckpt")
    replace_json_text(path / "config.json", _config_text("num_hidden_layers", "1000"))
    original = checkpoint.expected_shapes
    built: list[int] = []
    checkpoint.expected_shapes = lambda config, prefix: built.append(1) or original(config, prefix)  # type: ignore
    try:
        expect_refusal(lambda: Reranker(path, **LOAD), r"declares 1000 layers, .* stores tensors of only 2", path)
    finally:
        checkpoint.expected_shapes = original
    assert built == []


# ---------------------------------------------------------------- safetensors headers


def _header_file(path: Path, header_text: str, data: bytes = bytes(64)) -> Path:
    raw = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _entry(dtype: str = '"F32"', shape: str = "[2]", offsets: str = "[0, 8]") -> str:
    return f'{{"dtype": {dtype}, "shape": {shape}, "data_offsets": {offsets}}}'


HEADERS: list[Any] = [
    pytest.param('{"w": ' + _entry(dtype='["F32"]') + "}", r"tensor 'w' has dtype \['F32'\]", id="dtype-list"),
    pytest.param('{"w": ' + _entry(dtype="{}") + "}", r"tensor 'w' has dtype \{\}", id="dtype-object"),
    pytest.param(
        '{"w": ' + _entry(shape=f"[{HUGE_INT}]") + "}", r"corrupt safetensors header: not valid JSON", id="5000-digits"
    ),
    pytest.param('{"w": ' + _entry(shape="[" * 50_000 + "]" * 50_000) + "}", r"nested too deeply", id="deep"),
    pytest.param(
        '{"a": ' + _entry(offsets="[0, 8]") + ', "b": ' + _entry(offsets="[4, 12]") + "}",
        r"tensors 'a' and 'b' have overlapping byte ranges",
        id="overlap",
    ),
    pytest.param(
        '{"a": ' + _entry(offsets="[0, 8]") + ', "b": ' + _entry(offsets="[0, 8]") + "}",
        r"tensors 'a' and 'b' have overlapping byte ranges",
        id="same-bytes",
    ),
]


@pytest.mark.parametrize(("header", "message"), HEADERS)
def test_hostile_header_is_refused(tmp_path: Path, header: str, message: str) -> None:
    path = _header_file(tmp_path / "model.safetensors", header)
    expect_refusal(lambda: read_header(path), message, path)


def test_adjacent_and_empty_tensors_do_not_overlap(tmp_path: Path) -> None:
    header = '{"a": ' + _entry(offsets="[0, 8]") + ', "e": ' + _entry(shape="[0]", offsets="[8, 8]")
    header += ', "b": ' + _entry(offsets="[8, 16]") + "}"
    assert set(read_header(_header_file(tmp_path / "ok.safetensors", header))) == {"a", "e", "b"}


# ---------------------------------------------------------------- the shard index


@pytest.mark.parametrize(
    "shard",
    ["../outside.safetensors", "/tmp/outside.safetensors", "sub/model.safetensors", "..", "a\\b.safetensors"],
)
def test_shard_paths_leaving_the_directory_are_refused_unopened(
    sharded_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard: str
) -> None:
    path = clone(sharded_dir, tmp_path / "ckpt")
    shutil.copy(next(sharded_dir.glob("*.safetensors")), tmp_path / "outside.safetensors")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = shard
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    opened: list[Path] = []
    monkeypatch.setattr(checkpoint, "read_header", lambda file: opened.append(file) or read_header(file))
    expect_refusal(
        lambda: Reranker(path, **LOAD), rf"names shard {re.escape(repr(shard))}; shards must be file names", path
    )
    assert opened == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param('{"weight_map": ' + DEEP + "}", r"nested too deeply", id="deep"),
        pytest.param('{"metadata": {"total_size": ' + HUGE_INT + "}}", r"not valid JSON", id="5000-digits"),
        pytest.param('{"weight_map": {"model.norm.weight": 5}}', r"has no 'weight_map' object", id="not-a-name"),
    ],
)
def test_hostile_index_is_refused(sharded_dir: Path, tmp_path: Path, content: str, message: str) -> None:
    path = clone(sharded_dir, tmp_path / "ckpt")
    (path / "model.safetensors.index.json").write_text(content)
    expect_refusal(lambda: Reranker(path, **LOAD), message, path / "model.safetensors.index.json")


# ---------------------------------------------------------------- FIFOs, directories, broken files


@pytest.fixture
def unblock_fifos() -> Iterator[list[Path]]:
    """FIFOs appended to this list get a writer after 3 s, so code that waits on them cannot hang the suite."""
    fifos: list[Path] = []
    done = threading.Event()

    def writer() -> None:
        if not done.wait(3):
            for fifo in fifos:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:  # no reader: nothing is blocked on it
                    pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    yield fifos
    done.set()
    thread.join()


SPECIAL_FILES = ["config.json", "tokenizer.json", "model.safetensors", "model.safetensors.index.json"]


@pytest.mark.parametrize("kind", ["fifo", "directory"])
@pytest.mark.parametrize("name", SPECIAL_FILES)
def test_fifo_or_directory_instead_of_a_file(
    reranker_dir: Path, tmp_path: Path, unblock_fifos: list[Path], name: str, kind: str
) -> None:
    path = clone(reranker_dir, tmp_path / "ckpt")
    target = path / name
    if target.exists() or target.is_symlink():
        target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
        unblock_fifos.append(target)
    else:
        target.mkdir()
    start = time.perf_counter()
    message = "is a FIFO; expected a regular file" if kind == "fifo" else "is a directory; expected a regular file"
    expect_refusal(lambda: Reranker(path, **LOAD), message, target)
    assert time.perf_counter() - start < 2


def test_index_load_refuses_a_fifo(tmp_path: Path, unblock_fifos: list[Path]) -> None:
    path = tmp_path / "index.safetensors"
    os.mkfifo(path)
    unblock_fifos.append(path)
    start = time.perf_counter()
    expect_refusal(lambda: Index.load(path), r"is a FIFO; expected a regular file", path)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_text("{not json"), id="invalid"),
        pytest.param(lambda p: p.write_bytes(b"\xff\xfe garbage"), id="not-utf8"),
        pytest.param(lambda p: p.write_text('{"version": "1.0", "model": {"type": "Nope"}}'), id="not-a-tokenizer"),
        pytest.param(lambda p: p.write_text(DEEP), id="deep"),
        pytest.param(lambda p: p.symlink_to(p.parent / "missing.json"), id="dangling-link"),
    ],
)
def test_broken_tokenizer_json_never_falls_back_to_the_bundled_one(
    reranker_dir: Path, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = clone(reranker_dir, tmp_path / "ckpt")
    (path / "tokenizer.json").unlink()
    damage(path / "tokenizer.json")
    for cls in (Reranker, Embedder):
        expect_refusal(lambda: cls(path, **LOAD), r"tokenizer\.json", path / "tokenizer.json")  # noqa: B023
