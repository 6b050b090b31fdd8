"""Peak host memory while loading: at most ~1.3x the weights in the target dtype (measured in a fresh process),
whatever the dtype the file stores (the real Qwen3 checkpoints are bf16)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qrerank.testing import random_checkpoint


@pytest.fixture(scope="module", params=["float32", "bfloat16", "float16"])
def real_width_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Qwen3-0.6B widths (the 151669 x 1024 embedding dominates), 4 layers, stored in each dtype: 0.4-0.8 GB."""
    path = random_checkpoint(
        tmp_path_factory.mktemp(f"load_{request.param}"),
        "0.6B",
        "reranker",
        dtype=getattr(torch, request.param),
        num_hidden_layers=4,
    )
    yield path
    shutil.rmtree(path)  # one at a time on disk


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_peak_host_memory_during_load(real_width_checkpoint: Path, dtype: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qrerank.bench.load", str(real_width_checkpoint), "--dtype", dtype],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dtype"] == f"torch.{dtype}"
    # bf16 from an fp32 file: a whole-tensor fp32 staging copy of the embedding alone would be 2x; fp32 from
    # a bf16 file: a whole-tensor bf16 copy would be 1.5x.
    assert result["ratio"] <= 1.3, result
