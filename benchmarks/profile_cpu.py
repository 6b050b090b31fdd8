"""Where a CPU request's time goes: one score or embed request under `torch.profiler`, grouped by kind of op.

    python benchmarks/profile_cpu.py --task embed --dtype auto --threads 2

Random weights of a preset's shape (0.6B unless told), passages of 40-220 words (as `qrerank bench`).
Shares are of the summed self CPU time of every op; "compiled" is every Inductor-generated kernel (norms,
q/k-norm+RoPE, SiLU-mul and, on the bf16 GEMM attention path, its row max and softmax).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from qrerank import Embedder, Reranker
from qrerank.bench import corpus
from qrerank.cpu_features import model_name
from qrerank.testing import random_checkpoint

GROUPS = {  # profiler key -> group; first match wins, anything else is "other"
    "aten::mm": "linear layers (aten::mm)",
    "flash_attention": "attention (SDPA)",
    "aten::bmm": "attention (bf16 GEMMs)",
    "aten::baddbmm": "attention (bf16 GEMMs)",
    "CompiledFxGraph": "compiled elementwise kernels",
    "aten::copy_": "copies",
}


def group_of(key: str) -> str:
    return next((group for pattern, group in GROUPS.items() if pattern in key), "other")


def shares(prof: profile) -> dict[str, float]:
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        group = group_of(event.key)
        totals[group] = totals.get(group, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values())
    return {group: t / whole for group, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def request(task: str, folder: Path, preset: str, dtype: str, docs: int) -> tuple[str, Callable[[], object]]:
    kind = "reranker" if task == "score" else "embedding"
    path = random_checkpoint(folder / kind, preset, kind, dtype=torch.bfloat16)
    texts = corpus.passages(docs, 40, 220)
    if task == "score":
        reranker = Reranker(path, device="cpu", dtype=dtype)
        query = corpus.queries(1)[0]
        return repr(reranker), lambda: reranker.score(query, texts)
    embedder = Embedder(path, device="cpu", dtype=dtype)
    return repr(embedder), lambda: embedder.embed(texts)


def profile_request(task: str, preset: str, dtype: str, docs: int) -> tuple[str, float, dict[str, float]]:
    """(engine repr, seconds of the profiled request, share of self CPU time per group)."""
    with tempfile.TemporaryDirectory(prefix="qrerank-profile-") as tmp:
        engine, run = request(task, Path(tmp), preset, dtype, docs)
        run()  # untimed: compiles and fills the workspaces
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        return engine, time.perf_counter() - start, shares(prof)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["score", "embed"], default="embed")
    parser.add_argument("--preset", choices=["tiny", "0.6B", "4B", "8B"], default="0.6B")
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    parser.add_argument("--docs", type=int, default=16, help="documents (score) or passages (embed) in the request")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine, wall, by_group = profile_request(args.task, args.preset, args.dtype, args.docs)
    print(f"{model_name()}, {args.threads} threads, torch {torch.__version__}")
    print(f"{engine}\none {args.task} request of {args.docs} passages: {wall:.2f} s under the profiler")
    for group, share in by_group.items():
        print(f"  {group:<32} {share:6.1%}")


if __name__ == "__main__":
    main()
