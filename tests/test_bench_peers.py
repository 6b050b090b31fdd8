"""`qrerank bench` figures beyond speed: agreement measures, the CPU matmul rate, and the optional peers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qrerank.bench import agreement
from qrerank.bench.roofline import measure_cpu_matmul
from qrerank.cli import main


def test_agreement_measures() -> None:
    a = [np.array([0.9, 0.1, 0.5]), np.array([0.2, 0.3])]
    b = [np.array([0.8, 0.2, 0.6]), np.array([0.3, 0.2])]
    assert agreement.max_abs_diff(a, b) == pytest.approx(0.1)
    assert agreement.spearman(a[0], b[0]) == pytest.approx(1.0)
    assert agreement.spearman(a[1], b[1]) == pytest.approx(-1.0)
    assert agreement.min_spearman(a, b) == pytest.approx(-1.0)
    assert agreement.identical_rankings(a, b) == 1
    assert agreement.spearman(np.array([1.0]), np.array([2.0])) == 1.0
    x = np.array([[1.0, 0.0], [0.6, 0.8]])
    assert agreement.min_cosine([x], [np.array([[1.0, 0.0], [0.0, 1.0]])]) == pytest.approx(0.8)


def test_cpu_matmul_rate_is_measured() -> None:
    assert measure_cpu_matmul(torch.float32, n=64, repeats=2) > 0


def test_bench_reports_cpu_features_and_peers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--peers adds ONNX Runtime (exported from the same checkpoint) and sentence-transformers, agreeing with
    qrerank in fp32 to rounding."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("sentence_transformers")
    out = tmp_path / "bench.json"
    argv = ["bench", "--preset", "tiny", "--requests", "2", "--docs", "3", "--embed-batch", "3", "--max-words", "30"]
    assert main([*argv, "--dtype", "float32", "--peers", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    env = report["environment"]
    assert env["threads"] == 1 and env["matmul_gflops"] > 0 and isinstance(env["native_bf16"], bool)
    assert env["cpu_features"] in printed and "over the best peer" in printed
    score, embed = report["score"], report["embed"]
    assert set(score["agreement"]) == {"official", "onnxruntime", "onnxruntime-int8"}
    assert set(embed["agreement"]) == {"official", "sentence-transformers", "onnxruntime", "onnxruntime-int8"}
    assert score["agreement"]["onnxruntime"]["max_abs_score_diff"] < 1e-5
    assert score["agreement"]["onnxruntime"]["identical_rankings"] == "2/2"
    assert embed["agreement"]["onnxruntime"]["min_cosine"] > 0.99999
    assert embed["agreement"]["sentence-transformers"]["min_cosine"] > 0.99999
    for task in (score, embed):
        assert task["best_peer"] in task["agreement"] and task["speedup_vs_best_peer"] > 0
        assert 0 < task["matmul_fraction"] and task["qrerank"]["cpu_s"] > 0
        assert task["matmul_gflops"] >= env["matmul_gflops"]  # the ceiling is the run's fastest sample
