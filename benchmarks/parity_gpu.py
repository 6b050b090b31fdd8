"""End-to-end bf16 parity at the Qwen3-0.6B shape on a GPU: qrerank's kernels against the official recipe.

A random-weight reranker of the 0.6B shape (28 layers, 16 q / 8 kv heads of 128) with the real tokenizer
scores three requests: 1 query x 32 passages of ~300 tokens (one eager batch with a shared prefix),
1 query x 3 passages (a CUDA-graph replay) and 8 pairs of distinct queries (nothing shared). The
official transformers recipe in fp32 is the reference. qrerank in bf16 (Triton kernels, CUDA graphs,
warm-up) passes when its largest and mean score errors are at most twice those of the official recipe
run in bf16, plus 1e-3 (random weights put scores mid-range, where a sigmoid passes errors through).

python benchmarks/parity_gpu.py --json parity.json [--checkpoints DIR]     (exit 1 when parity fails)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_gpu import cached_checkpoint, requests, write_json

from qrerank import Reranker
from qrerank.bench.baselines import OfficialReranker

CUDA = torch.device("cuda")


def score_all(score: Callable[[str, list[str]], np.ndarray], work: list[tuple[str, list[str]]]) -> np.ndarray:
    return np.concatenate([score(query, docs) for query, docs in work])


def run(json_path: Path | None, checkpoints: Path | None) -> bool:
    if not torch.cuda.is_available():
        raise SystemExit("parity_gpu.py needs a CUDA device")
    pairs = requests(8, 1, seed=12)
    work = [requests(1, 32, seed=10)[0], requests(1, 3, seed=11)[0]]
    with tempfile.TemporaryDirectory(prefix="qrerank-parity-") as tmp:
        root = checkpoints or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        path = cached_checkpoint(root, "0.6B", "reranker")
        ours = Reranker(path, device=CUDA, dtype=torch.bfloat16)
        got = np.concatenate([score_all(ours.score, work), ours.score_pairs([(q, d[0]) for q, d in pairs])])
        del ours
        official_scores = {}
        for dtype in (torch.float32, torch.bfloat16):
            official = OfficialReranker(path, CUDA, dtype, 8192)
            official_scores[dtype] = np.concatenate([score_all(official.score, work), score_all(official.score, pairs)])
            del official
            torch.cuda.empty_cache()
    exact, official_bf16 = official_scores[torch.float32], official_scores[torch.bfloat16]
    ours_error, official_error = np.abs(got - exact), np.abs(official_bf16 - exact)
    report = {
        "device": torch.cuda.get_device_name(),
        "scores": len(exact),
        "max_abs_error": float(ours_error.max()),
        "mean_abs_error": float(ours_error.mean()),
        "official_bf16_max_abs_error": float(official_error.max()),
        "official_bf16_mean_abs_error": float(official_error.mean()),
    }
    report["passed"] = bool(
        report["max_abs_error"] <= 2 * report["official_bf16_max_abs_error"] + 1e-3
        and report["mean_abs_error"] <= 2 * report["official_bf16_mean_abs_error"] + 1e-3
    )
    write_json(json_path, report)
    print(json.dumps(report, indent=1))
    return report["passed"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--checkpoints", type=Path, help="keep (and reuse) the random checkpoint in this directory")
    args = parser.parse_args()
    sys.exit(0 if run(args.json, args.checkpoints) else 1)
