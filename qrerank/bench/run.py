"""`qrerank bench`: qrerank against the official transformers recipes (and, with --peers, sentence-transformers
and ONNX Runtime), same process, same checkpoint, same passages, requests interleaved."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qrerank import cpu_features
from qrerank.batching import shared_prefix_len
from qrerank.bench import agreement, corpus, onnx_peer
from qrerank.bench.baselines import OfficialEmbedder, OfficialReranker, SentenceTransformersEmbedder
from qrerank.bench.measure import PeakMemory, Run
from qrerank.bench.roofline import executed_flops, measure_cpu_matmul, model_flops
from qrerank.checkpoint import locate
from qrerank.embedder import Embedder
from qrerank.reranker import Reranker
from qrerank.testing import PRESETS, random_checkpoint
from qrerank.validation import resolve_device, resolve_dtype

System = Callable[[str, list[str]], Any]  # (query, docs) -> scores or embeddings


@dataclass(frozen=True)
class Workload:
    queries: list[str]
    docs: list[list[str]]  # one list of documents (or passages to embed) per request


@dataclass(frozen=True)
class Setup:
    device: torch.device
    dtype: torch.dtype
    max_length: int
    peers: bool
    workdir: Path  # where peers export their models
    between_rounds: Callable[[], None] | None  # run once per round of requests (the CPU matmul-rate sample)


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
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (default: bf16 on cuda and on CPUs with native bf16 matmuls, else fp32), float32, bfloat16",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run sentence-transformers and ONNX Runtime (fp32, int8) if installed: pip install 'qrerank[peers]'",
    )
    parser.add_argument("--threads", type=int, help="torch (and ONNX Runtime) threads (default: torch's own choice)")
    parser.add_argument("--json", type=Path, help="also write the full figures to this file")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    features = cpu_features.detect() if device.type == "cpu" else None
    dtype = resolve_dtype(args.dtype, device, features)
    warmup = Workload(["warm up"], [corpus.passages(2, 8, 8, seed=1)])  # short: it only loads code paths
    environment: dict[str, Any] = {
        "device": _device_name(device),
        "dtype": str(dtype),
        "dtype_requested": args.dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if features is not None:
        environment["cpu_features"] = features.describe()
        environment["native_bf16"] = features.native_bf16
        environment["matmul_gflops"] = measure_cpu_matmul(dtype)  # at the start; each task samples its own
    report: dict[str, Any] = {
        "environment": environment,
        "workload": {
            "requests": args.requests,
            "docs_per_score_request": args.docs,
            "texts_per_embed_request": args.embed_batch,
            "words_per_doc": [args.min_words, args.max_words],
            "max_length": args.max_length,
        },
    }
    _print_environment(environment)
    with tempfile.TemporaryDirectory(prefix="qrerank-bench-") as tmp:
        for task, kind, given in (("score", "reranker", args.model), ("embed", "embedding", args.embed_model)):
            if args.task not in (task, "both"):
                continue
            model = locate(given) if given else _random_model(Path(tmp) / kind, args.preset, kind)
            # Sampled between request rounds; the ceiling is the fastest rate seen in the run (start-up included):
            # on a shared machine a slow sample measures a neighbour's load, and quoting against it would put
            # qrerank above 100% of the hardware.
            rates: list[float] = [environment["matmul_gflops"]] if features else []
            sample = (lambda r=rates: r.append(measure_cpu_matmul(dtype, repeats=1))) if features else None
            setup = Setup(device, dtype, args.max_length, args.peers, Path(tmp), sample)
            bench, per_request = (_bench_score, args.docs) if task == "score" else (_bench_embed, args.embed_batch)
            work = _workload(args.requests, per_request, args.min_words, args.max_words)
            name = given or f"random-weight {args.preset} {kind}"
            report[task] = {"model": name, **bench(model, work, warmup, setup)}
            if rates:
                result = report[task]
                result["matmul_gflops"] = max(rates)
                result["matmul_fraction"] = result["model_gflops"] / result["matmul_gflops"]
                result["executed_fraction"] = result["executed_gflops"] / result["matmul_gflops"]
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


def _onnx_peers(model: Path, kind: str, setup: Setup, call: str) -> dict[str, System]:
    """ONNX Runtime fp32 and int8 peers, each skipped with its reason printed when it cannot be built."""
    if not setup.peers or setup.device.type != "cpu":
        return {}
    peers: dict[str, System] = {}
    for name, quantize in (("onnxruntime", False), ("onnxruntime-int8", True)):
        peer = onnx_peer.load(model, kind, setup.workdir, setup.max_length, quantize)
        if isinstance(peer, str):
            print(f"  {name}: skipped ({peer})", flush=True)
        else:
            method = getattr(peer, call)
            peers[name] = (lambda q, d, m=method: m(q, d)) if call == "score" else (lambda q, d, m=method: m(d))
    return peers


def _bench_score(model: Path, work: Workload, warmup: Workload, setup: Setup) -> dict[str, Any]:
    options = dict(device=setup.device, dtype=setup.dtype, max_length=setup.max_length)
    ours = Reranker(model, **options)
    unshared = Reranker(model, **options, share_prefix=False)
    official = OfficialReranker(model, setup.device, setup.dtype, setup.max_length)
    systems: dict[str, System] = {
        "official": lambda q, d: official.score(q, d),
        "qrerank": lambda q, d: ours.score(q, d),
        "unshared": lambda q, d: unshared.score(q, d),  # qrerank without shared-prefix reuse
        **_onnx_peers(model, "reranker", setup, "score"),
    }
    runs = _interleave(systems, work, warmup, setup)
    prefix_saving = sum(runs.pop("unshared").latencies) / sum(runs["qrerank"].latencies)
    pairs = [[(q, d) for d in docs] for q, docs in zip(work.queries, work.docs)]
    sequences = [ours.prompt.encode(request, None) for request in pairs]
    mine = runs["qrerank"].outputs
    agree = {
        name: {
            "max_abs_score_diff": agreement.max_abs_diff(run.outputs, mine),
            "min_spearman": agreement.min_spearman(run.outputs, mine),
            "identical_rankings": f"{agreement.identical_rankings(run.outputs, mine)}/{len(work.queries)}",
        }
        for name, run in runs.items()
        if name != "qrerank"
    }
    return _compare(runs, work, ours.engine.config, sequences) | {
        **agree["official"],  # the headline agreement: with the official recipe
        "agreement": agree,
        "shared_prefix_speedup": prefix_saving,
        "engine": repr(ours),
    }


def _bench_embed(model: Path, work: Workload, warmup: Workload, setup: Setup) -> dict[str, Any]:
    ours = Embedder(model, device=setup.device, dtype=setup.dtype, max_length=setup.max_length)
    official = OfficialEmbedder(model, setup.device, setup.dtype, setup.max_length)
    systems: dict[str, System] = {"official": lambda q, d: official.embed(d), "qrerank": lambda q, d: ours.embed(d)}
    if setup.peers:
        try:
            st = SentenceTransformersEmbedder(model, setup.device, setup.dtype, setup.max_length)
            systems["sentence-transformers"] = lambda q, d: st.embed(d)
        except SystemExit as missing:
            print(f"  sentence-transformers: skipped ({missing})", flush=True)
    systems |= _onnx_peers(model, "embedding", setup, "embed")
    runs = _interleave(systems, work, warmup, setup)
    sequences = [ours.prompt.encode(docs, None) for docs in work.docs]
    mine = runs["qrerank"].outputs
    agree = {name: {"min_cosine": agreement.min_cosine(run.outputs, mine)} for name, run in runs.items()}
    del agree["qrerank"]
    return _compare(runs, work, ours.engine.config, sequences) | {
        **agree["official"],
        "agreement": agree,
        "engine": repr(ours),
    }


def _interleave(systems: dict[str, System], work: Workload, warmup: Workload, setup: Setup) -> dict[str, Run]:
    """Alternate the systems request by request (and which goes first), after one untimed warm-up each."""
    device = setup.device
    runs = {name: Run(name) for name in systems}
    for fn in systems.values():
        fn(warmup.queries[0], warmup.docs[0])
    names = list(systems)
    for i, (query, docs) in enumerate(zip(work.queries, work.docs)):
        if setup.between_rounds is not None:
            setup.between_rounds()
        for name in names if i % 2 == 0 else names[::-1]:
            with PeakMemory(device) as peak:
                runs[name].timed(lambda fn=systems[name], q=query, d=docs: fn(q, d), device)
            runs[name].peak_memory = max(runs[name].peak_memory, peak.peak)
    return runs


def _compare(runs: dict[str, Run], work: Workload, config: Any, sequences: list[list[list[int]]]) -> dict[str, Any]:
    """`sequences`: each request's token ids as qrerank runs them (one group each, its shared prefix once)."""
    lengths = [len(ids) for group in sequences for ids in group]
    groups = [(shared_prefix_len(group), [len(ids) for ids in group]) for group in sequences]
    items = sum(len(d) for d in work.docs)
    summaries = {name: run.summary(items, sum(lengths)) for name, run in runs.items()}
    peers = {name: s["items_per_s"] for name, s in summaries.items() if name != "qrerank"}
    best = max(peers, key=peers.__getitem__)
    return summaries | {
        "tokens": sum(lengths),
        "speedup": summaries["qrerank"]["items_per_s"] / summaries["official"]["items_per_s"],
        "best_peer": best,
        "speedup_vs_best_peer": summaries["qrerank"]["items_per_s"] / peers[best],
        # the work of every sequence run whole (no credit for shared prefixes skipped), per second of qrerank
        "model_gflops": model_flops(config, lengths) / summaries["qrerank"]["total_s"] / 1e9,
        # the work qrerank's forward actually ran (prefixes once, the last layer on final tokens), per second
        "executed_gflops": executed_flops(config, groups) / summaries["qrerank"]["total_s"] / 1e9,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_features.model_name()


def _print_environment(env: dict[str, Any]) -> None:
    line = f"{env['device']}, torch {env['torch']}, {env['threads']} threads, dtype {env['dtype']}"
    if "cpu_features" in env:
        line += f" ({env['dtype_requested']}; {env['cpu_features']}), matmul {env['matmul_gflops']:.0f} GFLOP/s"
    print(line, flush=True)


def _print_task(task: str, result: dict[str, Any]) -> None:
    unit = "docs/s" if task == "score" else "texts/s"
    names = ["qrerank", "official", *(name for name in result["agreement"] if name != "official")]
    print(f"\n{task}: {result['model']}, {result['tokens']} tokens per system\n  {result['engine']}")
    header = f"{'system':<22} {unit:>9} {'tokens/s':>9} {'p50 ms':>9} {'p95 ms':>9} {'CPU s':>7} {'peak MB':>8}"
    print(f"  {header}  agreement")
    for name in names:
        s = result[name]
        agree = result["agreement"].get(name, {})
        if task == "score" and agree:
            quality = (
                f"max |diff| {agree['max_abs_score_diff']:.2e}, Spearman >= {agree['min_spearman']:.4f}, "
                f"same order {agree['identical_rankings']}"
            )
        else:
            quality = f"min cosine {agree['min_cosine']:.6f}" if agree else ""
        print(
            f"  {name:<22} {s['items_per_s']:9.2f} {s['tokens_per_s']:9.1f} {s['p50_ms']:9.1f} {s['p95_ms']:9.1f} "
            f"{s['cpu_s']:7.1f} {s['peak_memory_mb']:8.0f}  {quality}"
        )
    print(
        f"  speed-up x{result['speedup']:.2f} over the official recipe, "
        f"x{result['speedup_vs_best_peer']:.2f} over the best peer ({result['best_peer']})"
    )
    if "matmul_fraction" in result:
        rate, fraction = result["model_gflops"], result["matmul_fraction"]
        matmul, executed = result["matmul_gflops"], result["executed_gflops"]
        print(f"  model FLOP rate {rate:.0f} GFLOP/s = {fraction:.0%} of the run's best matmul rate ({matmul:.0f})")
        print(
            f"  executed FLOP rate {executed:.0f} GFLOP/s = {result['executed_fraction']:.0%} of it "
            "(shared prefixes once, the last layer on final tokens only)"
        )
    if "shared_prefix_speedup" in result:
        print(f"  shared-prefix reuse: x{result['shared_prefix_speedup']:.2f} over qrerank without it", flush=True)
