"""Peak host memory while loading: at most ~1.3x the weights in the target dtype (measured in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qrerank.testing import random_checkpoint


@pytest.fixture(scope="module")
def real_width_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3-0.6B widths (the 151669 x 1024 embedding dominates), 4 layers, stored in fp32: ~0.8 GB."""
    return random_checkpoint(
        tmp_path_factory.mktemp("load"), "0.6B", "reranker", dtype=torch.float32, num_hidden_layers=4
    )


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_peak_host_memory_during_load(real_width_checkpoint: Path, dtype: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qrerank.bench.load", str(real_width_checkpoint), "--dtype", dtype],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dtype"] == f"torch.{dtype}"
    # bf16 from an fp32 file: a whole-tensor fp32 staging copy of the embedding alone would be 2x.
    assert result["ratio"] <= 1.3, result
