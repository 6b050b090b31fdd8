"""The `qrerank` command and the one-call `qrerank.score` / `qrerank.embed` functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import qrerank
from qrerank import Embedder, Reranker
from qrerank.cli import main
from qrerank.functions import _engine


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_cli_score_ranks_like_the_api(
    capsys: pytest.CaptureFixture[str], reranker_dir: Path, reranker: Reranker
) -> None:
    docs = ["Paris is the capital of France.", "", "Bananas are yellow.", "France is in Europe."]
    code, result, _ = _run(
        capsys, "score", "--model", str(reranker_dir), "--max-length", "256", "--dtype", "fp32", "capital?", *docs
    )
    assert code == 0
    assert result == reranker.rank("capital?", docs, return_documents=True)


def test_cli_score_reads_docs_file_and_top_k(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, reranker_dir: Path, reranker: Reranker
) -> None:
    docs = ["one", "two two", "three three three"]
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    argv = [
        "score",
        "--model",
        str(reranker_dir),
        "--max-length",
        "256",
        "--dtype",
        "fp32",
        "q",
        "--docs-file",
        str(tmp_path / "docs.txt"),
    ]
    code, result, _ = _run(capsys, *argv, "--top-k", "2")
    assert code == 0
    assert [r["index"] for r in result] == [r["index"] for r in reranker.rank("q", docs, top_k=2)]


def test_cli_embed_matches_the_api(capsys: pytest.CaptureFixture[str], embedding_dir: Path, embedder: Embedder) -> None:
    code, result, _ = _run(
        capsys,
        "embed",
        "--model",
        str(embedding_dir),
        "--max-length",
        "256",
        "--dtype",
        "fp32",
        "--dim",
        "32",
        "a",
        "b c",
    )
    assert code == 0
    np.testing.assert_allclose(np.array(result), embedder.embed(["a", "b c"], dim=32), rtol=0, atol=1e-6)


def test_cli_reports_bad_arguments(capsys: pytest.CaptureFixture[str], embedding_dir: Path) -> None:
    code, _, err = _run(capsys, "embed", "--model", str(embedding_dir), "--dim", "9999", "text")
    assert code == 2 and "dim" in err and "9999" in err
    code, _, err = _run(capsys, "score", "--model", str(embedding_dir / "missing"), "q", "d")
    assert code == 2 and "missing" in err


def test_cli_bench_compares_with_the_official_recipes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--preset", "tiny", "--requests", "2", "--docs", "3", "--max-words", "40", "--json", str(out)]
    argv += ["--dtype", "float32"]  # exact agreement with the official recipe needs fp32 on both sides
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "random-weight" in printed and "speed-up" in printed
    report = json.loads(out.read_text())
    for task in ("score", "embed"):
        for system in ("official", "qrerank"):
            assert report[task][system]["items_per_s"] > 0 and report[task][system]["p95_ms"] > 0
        assert report[task]["speedup"] > 0 and report[task]["tokens"] > 0
    assert report["score"]["max_abs_score_diff"] < 1e-5 and report["score"]["identical_rankings"] == "2/2"
    assert report["embed"]["min_cosine"] > 0.99999


def test_module_functions_cache_one_engine(reranker_dir: Path, embedding_dir: Path, reranker: Reranker) -> None:
    _engine.cache_clear()
    kw = dict(device="cpu", max_length=256, max_batch_tokens=512)
    first = qrerank.score("q", ["a", "b"], model=reranker_dir, dtype="fp32", **kw)
    second = qrerank.score("q", ["a", "b"], model=str(reranker_dir), dtype=torch.float32, raw=True, **kw)
    assert _engine.cache_info().misses == 1 and _engine.cache_info().hits == 1
    np.testing.assert_array_equal(first, reranker.score("q", ["a", "b"]))
    np.testing.assert_allclose(second, reranker.score("q", ["a", "b"], raw=True), rtol=0, atol=0)
    vectors = qrerank.embed("hello", model=embedding_dir, dim=32, **kw)
    assert vectors.shape == (1, 32) and _engine.cache_info().misses == 2
    _engine.cache_clear()


def test_embed_progress_bar(capsys: pytest.CaptureFixture[str], embedder: Embedder) -> None:
    quiet = embedder.embed(["a", "b c"])
    assert capsys.readouterr().err == ""
    shown = embedder.embed(["a", "b c"], show_progress=True)
    err = capsys.readouterr().err  # tqdm writes its counter to stderr
    assert "2/2" in err and "text" in err
    np.testing.assert_array_equal(quiet, shown)
