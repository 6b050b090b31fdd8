"""End-to-end GPU benchmark: qrerank (Triton kernels, bf16) vs the official transformers recipes (bf16, sdpa).

Random weights of the real Qwen3 shapes with the real tokenizer: speeds are real, scores are not.
Per preset (default 0.6B; 4B is opt-in: ~35 s to write its checkpoint, then loads):
  first score    time to the first score of a new engine, cold (no warm-up: the request compiles the
                 kernels this process has not compiled yet and captures its graph) and warm (after
                 Engine.warmup(), timed on its own), for 1 query x 4 documents (one graph bucket)
  score 1x100    1 query x 100 documents of ~300 tokens, several requests, both systems interleaved
  latency 1x20   p50 of 1 query x 20 documents against its compute floor (model FLOPs / matmul rate)
  prefix         the same 1x100 requests with share_prefix=False: the saving of shared-prefix reuse
  spearman       bf16 scores vs the fp32 torch-reference scores over 1,000 pairs
  embed          10,000 passages, 2,000 with --quick (qrerank: one call; official: batches of 64 as its
                 example does; and sentence-transformers with last-token pooling, batches of 64, when
                 it is installed)
  score 32x100   32 queries x 100 documents (qrerank: one score_batch call; official: query by query)
in this order; spearman, embed and 32x100 for the first preset only (time). MFU is model FLOPs per
second over the card's measured bf16 matmul rate. The JSON is rewritten after every measurement, so a run stopped
by a time limit keeps what it measured. `--checkpoints DIR` keeps the random checkpoints there for
later runs and other scripts (benchmarks/parity_gpu.py) instead of in a temporary directory.

python benchmarks/bench_gpu.py --json out.json [--presets 0.6B,4B] [--quick] [--checkpoints DIR]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qrerank import Embedder, Reranker, ScoreRequest
from qrerank.batching import shared_prefix_len
from qrerank.bench import corpus, measure
from qrerank.bench.baselines import OfficialEmbedder, OfficialReranker, SentenceTransformersEmbedder
from qrerank.bench.measure import PeakMemory
from qrerank.bench.roofline import measure_card, model_flops
from qrerank.testing import random_checkpoint

CUDA = torch.device("cuda")
WORDS_300_TOKENS = (190, 240)  # pydoc prose runs ~1.4 tokens per word


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    return measure.timed(fn, CUDA)


def peak_of(fn: Callable[[], Any]) -> int:
    with PeakMemory(CUDA) as peak:
        fn()
    return peak.peak


def summary(seconds: list[float], items: int, lengths: list[int], flops: float, tflops: float) -> dict[str, float]:
    total = sum(seconds)
    return {
        "items_per_s": items / total,
        "tokens_per_s": sum(lengths) / total,
        "p50_ms": 1e3 * float(np.median(seconds)),
        "p95_ms": 1e3 * float(np.percentile(seconds, 95)),
        "mfu": flops / total / (tflops * 1e12),
    }


def cached_checkpoint(root: Path, preset: str, kind: str) -> Path:
    """The bf16 random checkpoint of `preset` under `root`, written on first use (complete or not at all)."""
    path = root / f"{kind}-{preset}"
    if not path.exists():
        partial = Path(tempfile.mkdtemp(prefix=f".{kind}-{preset}-", dir=root))
        random_checkpoint(partial, preset, kind, seed=0, dtype=torch.bfloat16)
        partial.rename(path)
    return path


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """Replace `path` with the report so far (via a temporary file: a reader never sees half a file)."""
    if path is not None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(report, indent=2))
        os.replace(partial, path)


def requests(n: int, docs: int, seed: int) -> list[tuple[str, list[str]]]:
    texts = corpus.passages(n * docs, *WORDS_300_TOKENS, seed=seed)
    return [(q, texts[i * docs : (i + 1) * docs]) for i, q in enumerate(corpus.queries(n, seed=seed))]


def bench_first_score(path: Path) -> dict[str, float]:
    """Milliseconds to the first score of a new engine without and with the warm-up, and a later score."""
    query, docs = requests(1, 4, seed=7)[0]

    def first_scores(warmup: bool) -> dict[str, float]:
        engine = Reranker(path, device=CUDA, dtype=torch.bfloat16, warmup=False)
        # warm: the kernels are compiled already (by the cold engine), so this is the captures and two forwards
        out = {"warmup_s": timed(engine.engine.warmup)[0]} if warmup else {}
        out["first_score_ms"] = 1e3 * timed(lambda: engine.score(query, docs))[0]
        out["next_score_ms"] = 1e3 * float(np.median([timed(lambda: engine.score(query, docs))[0] for _ in range(5)]))
        return out

    return {"cold": first_scores(warmup=False), "warm": first_scores(warmup=True)}


def lengths_of(ours: Reranker, work: list[tuple[str, list[str]]]) -> list[int]:
    return [len(ids) for q, docs in work for ids in ours.prompt.encode([(q, d) for d in docs], None)]


def bench_scoring(
    ours: Reranker,
    official: OfficialReranker,
    path: Path,
    tflops: float,
    repeats: int,
    spearman: bool,
    out: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Fill `out` with the scoring measurements of one preset (32x100 aside), calling save() after each."""
    config = ours.engine.config

    warm = requests(1, 100, seed=99)[0]
    ours.score(*warm), official.score(*warm)
    work = requests(repeats, 100, seed=1)
    lengths = lengths_of(ours, work)
    flops = model_flops(config, lengths)
    times: dict[str, list[float]] = {"qrerank": [], "official": []}
    scores: dict[str, list[np.ndarray]] = {"qrerank": [], "official": []}
    systems = {"qrerank": ours.score, "official": official.score}
    for i, (query, docs) in enumerate(work):  # interleaved, alternating who goes first
        for name in list(systems) if i % 2 == 0 else list(systems)[::-1]:
            seconds, result = timed(lambda fn=systems[name], q=query, d=docs: fn(q, d))
            times[name].append(seconds)
            scores[name].append(result)
    out["score_1x100"] = {
        name: summary(times[name], 100 * repeats, lengths, flops, tflops)
        | {"peak_memory_mb": peak_of(lambda fn=fn: fn(*work[0])) / 2**20}
        for name, fn in systems.items()
    }
    one = out["score_1x100"]
    one["speedup"] = one["qrerank"]["items_per_s"] / one["official"]["items_per_s"]
    one["mean_doc_tokens"] = float(np.mean(lengths))
    one["max_abs_score_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(scores["qrerank"], scores["official"]))
    save()

    work20 = requests(20, 20, seed=2)
    latencies = [timed(lambda q=q, d=d: ours.score(q, d))[0] for q, d in work20]
    floor_s = float(np.mean([model_flops(config, lengths_of(ours, [w])) for w in work20])) / (tflops * 1e12)
    p50 = float(np.median(latencies))
    out["latency_1x20"] = {
        "p50_ms": 1e3 * p50,
        "p95_ms": 1e3 * float(np.percentile(latencies, 95)),
        "floor_ms": 1e3 * floor_s,
        "goal_ms": 1e3 * (1.3 * floor_s + 2e-3),
        "ratio_to_floor": p50 / floor_s,
    }
    save()

    unshared = Reranker(path, device=CUDA, dtype=torch.bfloat16, share_prefix=False, warmup=False)
    unshared.score(*warm)
    plain = [timed(lambda q=q, d=d, fn=unshared.score: fn(q, d))[0] for q, d in work]
    groups = [ours.prompt.encode([(q, d) for d in docs], None) for q, docs in work]
    shared = [shared_prefix_len(g) for g in groups]
    shared_tokens = sum(p * (len(g) - 1) for p, g in zip(shared, groups))  # computed once instead of len(g) times
    out["prefix"] = {
        "shared_s": sum(times["qrerank"]),
        "plain_s": sum(plain),
        "speedup": sum(plain) / sum(times["qrerank"]),
        "tokens_saved_fraction": shared_tokens / sum(lengths),
        "mean_shared_prefix_tokens": float(np.mean(shared)),
    }
    del unshared
    save()
    if not spearman:
        return

    pairs = [(q, d) for q, docs in requests(10, 100, seed=4) for d in docs]
    reference = Reranker(path, device=CUDA, dtype=torch.float32, backend="torch")
    exact, fast = reference.score_pairs(pairs, raw=True), ours.score_pairs(pairs, raw=True)
    del reference
    out["spearman_bf16_vs_fp32"] = _spearman(fast, exact)
    out["max_abs_logit_diff_bf16_vs_fp32"] = float(np.abs(fast - exact).max())
    save()


def bench_32x100(ours: Reranker, official: OfficialReranker, tflops: float) -> dict[str, Any]:
    work = requests(32, 100, seed=3)
    lengths = lengths_of(ours, work)
    flops = model_flops(ours.engine.config, lengths)
    batch = [ScoreRequest(q, d) for q, d in work]
    ours_s, ours_scores = timed(lambda: ours.score_batch(batch))
    official_s, official_scores = timed(lambda: [official.score(q, d) for q, d in work])
    return {
        "qrerank": summary([ours_s], 3200, lengths, flops, tflops),
        "official": summary([official_s], 3200, lengths, flops, tflops),
        "speedup": official_s / ours_s,
        "max_abs_score_diff": float(np.abs(np.concatenate(ours_scores) - np.concatenate(official_scores)).max()),
    }


def bench_embedding(path: Path, tflops: float, count: int) -> dict[str, Any]:
    ours = Embedder(path, device=CUDA, dtype=torch.bfloat16)
    official = OfficialEmbedder(path, CUDA, torch.bfloat16, 8192)
    texts = corpus.passages(count, 40, 240, seed=5)
    ours.embed(texts[:64]), official.embed(texts[:64])
    lengths = [len(ids) for ids in ours.prompt.encode(texts, None)]
    flops = model_flops(ours.engine.config, lengths)
    ours_s, ours_vectors = timed(lambda: ours.embed(texts))
    official_s, official_vectors = timed(
        lambda: np.concatenate([official.embed(texts[i : i + 64]) for i in range(0, count, 64)])
    )
    peak = peak_of(lambda: ours.embed(texts[:2000]))
    extra: dict[str, Any] = {}
    if importlib.util.find_spec("sentence_transformers") is not None:
        del official
        gc.collect()
        torch.cuda.empty_cache()
        st = SentenceTransformersEmbedder(path, CUDA, torch.bfloat16, 8192)
        st.embed(texts[:64])
        st_s, st_vectors = timed(lambda: st.embed(texts))
        extra["sentence_transformers"] = summary([st_s], count, lengths, flops, tflops)
        extra["speedup_vs_sentence_transformers"] = st_s / ours_s
        extra["min_cosine_vs_sentence_transformers"] = float((ours_vectors * st_vectors).sum(axis=1).min())
    return extra | {
        "qrerank": summary([ours_s], count, lengths, flops, tflops) | {"peak_memory_mb": peak / 2**20},
        "official": summary([official_s], count, lengths, flops, tflops),
        "speedup": official_s / ours_s,
        "min_cosine": float((ours_vectors * official_vectors).sum(axis=1).min()),
        "texts": count,
        "mean_tokens": float(np.mean(lengths)),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def run(json_path: Path | None, presets: list[str], quick: bool, checkpoints: Path | None) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "quick": quick}

    def save() -> None:
        write_json(json_path, report)

    report["card"] = card = measure_card()
    tflops = card["matmul_tflops"]
    print(f"{report['device']}: bf16 matmul {tflops:.0f} TFLOP/s, copy {card['copy_gbps']:.0f} GB/s", flush=True)
    save()
    with tempfile.TemporaryDirectory(prefix="qrerank-gpu-bench-") as tmp:
        root = checkpoints or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for i, preset in enumerate(presets):
            path = cached_checkpoint(root, preset, "reranker")
            report[preset] = result = {"first_score": bench_first_score(path)}
            save()
            ours = Reranker(path, device=CUDA, dtype=torch.bfloat16)
            official = OfficialReranker(path, CUDA, torch.bfloat16, 8192)
            bench_scoring(ours, official, path, tflops, 3 if quick or i > 0 else 6, i == 0, result, save)
            if i == 0:  # last: what a time limit would cut first
                embedder = cached_checkpoint(root, preset, "embedding")
                result["embed"] = bench_embedding(embedder, tflops, 2000 if quick else 10_000)
                save()
                result["score_32x100"] = bench_32x100(ours, official, tflops)
                save()
            print(json.dumps({preset: result}, indent=1), flush=True)
            del ours, official
            gc.collect()
            torch.cuda.empty_cache()
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--presets", default="0.6B", help="comma-separated, e.g. 0.6B,4B (4B adds about a minute)")
    parser.add_argument("--quick", action="store_true", help="fewer requests and 2,000 passages")
    parser.add_argument("--checkpoints", type=Path, help="keep (and reuse) the random checkpoints in this directory")
    args = parser.parse_args()
    run(args.json, args.presets.split(","), args.quick, args.checkpoints)
