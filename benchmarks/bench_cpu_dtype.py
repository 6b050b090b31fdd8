"""bf16 against fp32 on CPU: how much the scores and embeddings move, and how much faster bf16 runs.

The same random-weight checkpoints (real Qwen3 shapes, real tokenizer), the same queries and passages, qrerank
once in fp32 and once in bf16; for the reranker the largest score difference and the rank correlation of each
query's documents (Spearman), for embeddings the smallest and mean cosine. This is the measurement behind the
CPU default dtype "auto" (README, "CPU").

python benchmarks/bench_cpu_dtype.py --preset 0.6B --queries 8 --docs 16 --json dtype.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qrerank import Embedder, Reranker, cpu_features
from qrerank.bench import agreement, corpus
from qrerank.testing import PRESETS, random_checkpoint


def _timed(fn: Callable[..., Any], requests: list[tuple[Any, ...]]) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    outputs = [fn(*request) for request in requests]
    return time.perf_counter() - start, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="0.6B", choices=list(PRESETS))
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--docs", type=int, default=16, help="documents per query; also passages per embed call")
    parser.add_argument("--min-words", type=int, default=40)
    parser.add_argument("--max-words", type=int, default=220)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    texts = corpus.passages(args.queries * args.docs, args.min_words, args.max_words)
    groups = [texts[i * args.docs : (i + 1) * args.docs] for i in range(args.queries)]
    queries = corpus.queries(args.queries)
    report: dict[str, object] = {"cpu": cpu_features.detect().describe(), "preset": args.preset, **vars(args)}
    report.pop("json")
    with tempfile.TemporaryDirectory(prefix="qrerank-dtype-") as tmp:
        for kind in ("reranker", "embedding"):
            path = random_checkpoint(Path(tmp) / kind, args.preset, kind, seed=0, dtype=torch.bfloat16)
            runs = {}
            for dtype in (torch.float32, torch.bfloat16):
                if kind == "reranker":
                    model = Reranker(path, device="cpu", dtype=dtype)
                    runs[dtype] = _timed(model.score, list(zip(queries, groups)))
                else:
                    model = Embedder(path, device="cpu", dtype=dtype)
                    runs[dtype] = _timed(model.embed, [(g,) for g in groups])
                del model
            (fp32_s, exact), (bf16_s, fast) = runs[torch.float32], runs[torch.bfloat16]
            result: dict[str, float | str] = {"bf16_speedup": fp32_s / bf16_s}
            if kind == "reranker":
                diffs = np.concatenate([np.abs(a - b) for a, b in zip(exact, fast)])
                rhos = [agreement.spearman(a, b) for a, b in zip(exact, fast)]
                top1 = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(exact, fast))
                result |= {
                    "max_abs_score_diff": float(diffs.max()),
                    "mean_abs_score_diff": float(diffs.mean()),
                    "min_spearman": min(rhos),
                    "median_spearman": float(np.median(rhos)),
                    "identical_rankings": f"{agreement.identical_rankings(exact, fast)}/{len(exact)}",
                    "same_top1": f"{top1}/{len(exact)}",
                }
            else:
                cosines = np.concatenate([(a * b).sum(axis=1) for a, b in zip(exact, fast)])
                result |= {"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())}
            report[kind] = result
            print(kind, json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
