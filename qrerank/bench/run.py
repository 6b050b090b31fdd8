"""End-to-end benchmark: qrerank vs the official transformers recipes on the same checkpoint and documents."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qrerank.bench import corpus
from qrerank.bench.baselines import OfficialEmbedder, OfficialReranker
from qrerank.bench.measure import PeakMemory, Run
from qrerank.checkpoint import locate
from qrerank.embedder import Embedder
from qrerank.reranker import Reranker
from qrerank.testing import PRESETS, random_checkpoint
from qrerank.validation import resolve_device, resolve_dtype


@dataclass(frozen=True)
class Workload:
    queries: list[str]
    docs: list[list[str]]  # one list of documents (or passages to embed) per request


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="reranker checkpoint (directory or hub id); default: random weights")
    parser.add_argument("--embed-model", help="embedding checkpoint; default: random weights")
    parser.add_argument("--preset", default="0.6B", choices=list(PRESETS), help="shape of the random checkpoints")
    parser.add_argument("--task", default="both", choices=["score", "embed", "both"])
    parser.add_argument("--requests", type=int, default=3, help="timed requests per task")
    parser.add_argument("--docs", type=int, default=6, help="documents per score request (1 query x docs)")
    parser.add_argument("--embed-batch", type=int, default=12, help="passages per embed request")
    parser.add_argument("--min-words", type=int, default=12)
    parser.add_argument("--max-words", type=int, default=96)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--json", type=Path, help="also write the full figures to this file")


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    warmup = Workload(["warm up"], [corpus.passages(2, 8, 8, seed=1)])  # short: it only loads code paths
    report: dict[str, Any] = {
        "environment": {
            "device": _device_name(device),
            "dtype": str(dtype),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "workload": {
            "requests": args.requests,
            "docs_per_score_request": args.docs,
            "texts_per_embed_request": args.embed_batch,
            "words_per_doc": [args.min_words, args.max_words],
            "max_length": args.max_length,
        },
    }
    with tempfile.TemporaryDirectory(prefix="qrerank-bench-") as tmp:
        for task, kind, given in (("score", "reranker", args.model), ("embed", "embedding", args.embed_model)):
            if args.task not in (task, "both"):
                continue
            model = locate(given) if given else _random_model(Path(tmp) / kind, args.preset, kind)
            bench, per_request = (_bench_score, args.docs) if task == "score" else (_bench_embed, args.embed_batch)
            work = _workload(args.requests, per_request, args.min_words, args.max_words)
            name = given or f"random-weight {args.preset} {kind}"
            report[task] = {"model": name, **bench(model, work, warmup, device, dtype, args.max_length)}
            _print_task(task, report[task])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


def _workload(requests: int, per_request: int, min_words: int, max_words: int) -> Workload:
    texts = corpus.passages(requests * per_request, min_words, max_words)
    return Workload(corpus.queries(requests), [texts[i * per_request : (i + 1) * per_request] for i in range(requests)])


def _random_model(path: Path, preset: str, kind: str) -> Path:
    print(
        f"building a random-weight Qwen3-{'Reranker' if kind == 'reranker' else 'Embedding'}-{preset}-shaped "
        f"checkpoint with the bundled Qwen3 tokenizer (no weights are downloaded): speeds are real, scores are not",
        flush=True,
    )
    return random_checkpoint(path, preset, kind, seed=0, dtype=torch.bfloat16)


def _bench_score(
    model: Path, work: Workload, warmup: Workload, device: torch.device, dtype: torch.dtype, max_length: int
) -> dict[str, Any]:
    ours = Reranker(model, device=device, dtype=dtype, max_length=max_length)
    unshared = Reranker(model, device=device, dtype=dtype, max_length=max_length, share_prefix=False)
    official = OfficialReranker(model, device, dtype, max_length)
    systems = {
        "official": lambda q, d: official.score(q, d),
        "qrerank": lambda q, d: ours.score(q, d),
        "unshared": lambda q, d: unshared.score(q, d),  # qrerank without shared-prefix reuse
    }
    runs = _interleave(systems, work, warmup, device)
    prefix_saving = sum(runs.pop("unshared").latencies) / sum(runs["qrerank"].latencies)
    tokens = sum(
        len(ids) for q, docs in zip(work.queries, work.docs) for ids in ours.prompt.encode([(q, d) for d in docs], None)
    )
    diff = max(float(np.abs(a - b).max()) for a, b in zip(runs["official"].outputs, runs["qrerank"].outputs))
    same_order = sum(
        list(np.argsort(-a, kind="stable")) == list(np.argsort(-b, kind="stable"))
        for a, b in zip(runs["official"].outputs, runs["qrerank"].outputs)
    )
    return _compare(runs, work, tokens) | {
        "max_abs_score_diff": diff,
        "identical_rankings": f"{same_order}/{len(work.queries)}",
        "shared_prefix_speedup": prefix_saving,
    }


def _bench_embed(
    model: Path, work: Workload, warmup: Workload, device: torch.device, dtype: torch.dtype, max_length: int
) -> dict[str, Any]:
    ours = Embedder(model, device=device, dtype=dtype, max_length=max_length)
    official = OfficialEmbedder(model, device, dtype, max_length)
    systems = {"official": lambda q, d: official.embed(d), "qrerank": lambda q, d: ours.embed(d)}
    runs = _interleave(systems, work, warmup, device)
    tokens = sum(len(ids) for docs in work.docs for ids in ours.prompt.encode(docs, None))
    cosine = min(float((a * b).sum(axis=1).min()) for a, b in zip(runs["official"].outputs, runs["qrerank"].outputs))
    return _compare(runs, work, tokens) | {"min_cosine": cosine}


def _interleave(systems: dict[str, Any], work: Workload, warmup: Workload, device: torch.device) -> dict[str, Run]:
    """Alternate the systems request by request (and which goes first), after one untimed warm-up each."""
    runs = {name: Run(name) for name in systems}
    for fn in systems.values():
        fn(warmup.queries[0], warmup.docs[0])
    names = list(systems)
    for i, (query, docs) in enumerate(zip(work.queries, work.docs)):
        for name in names if i % 2 == 0 else names[::-1]:
            with PeakMemory(device) as peak:
                runs[name].timed(lambda fn=systems[name], q=query, d=docs: fn(q, d), device)
            runs[name].peak_memory = max(runs[name].peak_memory, peak.peak)
    return runs


def _compare(runs: dict[str, Run], work: Workload, tokens: int) -> dict[str, Any]:
    items = sum(len(d) for d in work.docs)
    summaries = {name: run.summary(items, tokens) for name, run in runs.items()}
    return summaries | {
        "tokens": tokens,
        "speedup": summaries["qrerank"]["items_per_s"] / summaries["official"]["items_per_s"],
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _print_task(task: str, result: dict[str, Any]) -> None:
    unit = "docs/s" if task == "score" else "texts/s"
    print(f"\n{task}: {result['model']}, {result['tokens']} tokens per system")
    print(f"  {'system':<9} {unit:>9} {'tokens/s':>9} {'p50 ms':>9} {'p95 ms':>9} {'peak MB':>9}")
    for name in ("official", "qrerank"):
        s = result[name]
        print(
            f"  {name:<9} {s['items_per_s']:9.2f} {s['tokens_per_s']:9.1f} {s['p50_ms']:9.1f} {s['p95_ms']:9.1f} "
            f"{s['peak_memory_mb']:9.0f}"
        )
    quality = (
        f"max |score diff| {result['max_abs_score_diff']:.2e}, identical rankings {result['identical_rankings']}"
        if task == "score"
        else f"min cosine {result['min_cosine']:.6f}"
    )
    print(f"  speed-up x{result['speedup']:.2f} over the official recipe; {quality}", flush=True)
    if "shared_prefix_speedup" in result:
        print(f"  shared-prefix reuse: x{result['shared_prefix_speedup']:.2f} over qrerank without it", flush=True)
