"""Serving overhead: requests/s and p50/p99 latency of `qrerank serve` against the same model called in process.

python benchmarks/bench_serving.py                                     # CPU: tiny random models
python benchmarks/bench_serving.py --preset 0.6B --device cuda --json out.json
python benchmarks/bench_serving.py --scenario hostile --large-docs 200  # CPU: a large request, a flood

The same requests (rerank: a query and --docs passages cut from pydoc_data.topics; embed: --docs
passages) run at each concurrency three ways: "direct" (threads calling Reranker.score /
Embedder.embed in this process), "async" (tasks awaiting AsyncEngine in this process: micro-batching,
no HTTP) and "http" (clients POSTing /v1/inference/{model} or /v1/embeddings to a `qrerank serve`
subprocess on a loopback port; aiohttp, or threads with http.client where aiohttp is missing).
http/direct is the serving overhead (goal: >= 0.9 at concurrency 32). Random weights of the real
shapes: speeds are honest, scores mean nothing. Exits 0 with a note where fastapi, uvicorn or
prometheus_client are missing (machines without the `serve` extra).

`--scenario hostile` (rerank) measures instead what one client can do to the others: small-request
p50/p99 and /health latency while a large request (--large-docs documents near --max-length tokens)
runs, and while --flood-clients threads post 4 MiB bodies of wrongly typed documents (serving_hostile.py).
"""

import argparse
import asyncio
import base64
import http.client
import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from serving_hostile import print_hostile, run_hostile  # beside this script

from qrerank import Embedder, Reranker
from qrerank.bench.corpus import passages, queries
from qrerank.serving import AsyncEngine
from qrerank.testing import random_checkpoint

REPO = Path(__file__).resolve().parents[1]
Request = tuple[str, list[str]]  # (query, documents) for rerank; ("", texts) for embed


def _stats(latencies: list[float], wall: float) -> dict[str, float]:
    ms = np.array(latencies) * 1e3
    return {
        "rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def run_threads(call: Callable[[Request], Any], requests: list[Request], concurrency: int) -> dict[str, float]:
    latencies: list[float] = []

    def worker(share: list[Request]) -> None:
        for request in share:
            start = time.perf_counter()
            call(request)
            latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(requests[i::concurrency],)) for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _stats(latencies, time.perf_counter() - start)


def run_async(model: Reranker | Embedder, requests: list[Request], concurrency: int, wait_ms: float) -> dict:
    async def main() -> dict[str, float]:
        latencies: list[float] = []
        is_reranker = isinstance(model, Reranker)
        engine = AsyncEngine(model if is_reranker else None, None if is_reranker else model, max_wait_ms=wait_ms)  # type: ignore[arg-type]
        async with engine:

            async def worker(share: list[Request]) -> None:
                for query, docs in share:
                    start = time.perf_counter()
                    await (engine.score(query, docs) if is_reranker else engine.embed(docs))
                    latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            await asyncio.gather(*(worker(requests[i::concurrency]) for i in range(concurrency)))
            return _stats(latencies, time.perf_counter() - start)

    return asyncio.run(main())


def http_body(kind: str, request: Request) -> tuple[str, dict[str, Any]]:
    query, docs = request
    if kind == "rerank":
        return "/v1/inference/bench", {"queries": [query], "documents": docs}
    return "/v1/embeddings", {"input": docs, "encoding_format": "base64"}


def run_http(url: str, kind: str, requests: list[Request], concurrency: int) -> dict[str, float]:
    if importlib.util.find_spec("aiohttp") is None:
        return run_threads(_http_client_call(url, kind), requests, concurrency)
    import aiohttp

    async def main() -> dict[str, float]:
        latencies: list[float] = []
        async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=concurrency)) as session:

            async def worker(share: list[Request]) -> None:
                for request in share:
                    route, body = http_body(kind, request)
                    start = time.perf_counter()
                    async with session.post(route, json=body) as response:
                        response.raise_for_status()
                        await response.read()
                    latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            await asyncio.gather(*(worker(requests[i::concurrency]) for i in range(concurrency)))
            return _stats(latencies, time.perf_counter() - start)

    return asyncio.run(main())


def _http_client_call(url: str, kind: str) -> Callable[[Request], Any]:
    """One keep-alive connection per thread (http.client, the fallback client)."""
    host, port = url.removeprefix("http://").split(":")
    local = threading.local()

    def call(request: Request) -> Any:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(host, int(port), timeout=120)
        route, body = http_body(kind, request)
        local.connection.request("POST", route, json.dumps(body), {"Content-Type": "application/json"})
        response = local.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{route}: {response.status} {data[:200]!r}")
        return json.loads(data)

    return call


def max_difference(url: str, kind: str, requests: list[Request], direct: Callable[[Request], Any]) -> float:
    """The largest difference between the server's results and the direct calls' (a sanity check)."""
    call, worst = _http_client_call(url, kind), 0.0
    for request in requests:
        answer = call(request)
        if kind == "rerank":
            got = np.array(answer["scores"], dtype=np.float32)
        else:
            got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in answer["data"]])
        worst = max(worst, float(np.abs(got - direct(request)).max()))
    return worst


def start_server(args: argparse.Namespace, checkpoint: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flag = "--model" if args.kind == "rerank" else "--embedding-model"
    name = "--served-model-name" if args.kind == "rerank" else "--served-embedding-model-name"
    argv = [sys.executable, "-m", "qrerank.cli", "serve", flag, str(checkpoint), name, "bench", "--port", str(port)]
    argv += ["--max-wait-ms", str(args.max_wait_ms), "--max-length", str(args.max_length), "--log-level", "warning"]
    argv += ["--device", args.device] if args.device else []
    argv += ["--dtype", args.dtype] if args.dtype else []
    server = subprocess.Popen([*argv, *extra], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"qrerank serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return server, url
        except OSError:
            time.sleep(0.25)
    server.kill()
    raise RuntimeError("qrerank serve did not start within 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="rerank", choices=["rerank", "embed"])
    parser.add_argument("--preset", default="tiny", help="random checkpoint shapes: tiny, 0.6B, 4B, 8B")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--docs", type=int, default=4, help="documents (rerank) or texts (embed) per request")
    parser.add_argument("--words", type=int, default=48, help="words per document (about 1.4 tokens each)")
    parser.add_argument("--requests", type=int, default=256, help="requests per concurrency level and mode")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--scenario", default="overhead", choices=["overhead", "hostile"])
    parser.add_argument("--large-docs", type=int, default=1000, help="hostile: documents of the large request")
    parser.add_argument("--flood-clients", type=int, default=4, help="hostile: threads posting invalid 4 MiB bodies")
    parser.add_argument("--hostile-seconds", type=float, default=5.0, help="hostile: length of the idle/flood phases")
    args = parser.parse_args()
    if args.scenario == "hostile" and args.kind != "rerank":
        parser.error("the hostile scenario runs a large rerank request: use --kind rerank")

    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if not importlib.util.find_spec(name)]
    if missing:
        note = f"bench_serving skipped: {', '.join(missing)} not installed (pip install 'qrerank[serve]')"
        print(note)
        if args.json:
            Path(args.json).write_text(json.dumps({"skipped": note}) + "\n")
        return

    texts = passages(args.requests * args.docs, args.words, args.words)
    asks = queries(args.requests) if args.kind == "rerank" else [""] * args.requests
    requests = [(q, texts[i * args.docs : (i + 1) * args.docs]) for i, q in enumerate(asks)]
    results: dict[str, Any] = {k: getattr(args, k) for k in ("kind", "preset", "docs", "words", "requests")}
    if args.scenario == "hostile":
        hostile(args, requests, results)
        return
    with tempfile.TemporaryDirectory(prefix="qrerank-serving-") as tmp:
        checkpoint = random_checkpoint(tmp, args.preset, "reranker" if args.kind == "rerank" else "embedding")
        engine_args = dict(device=args.device, dtype=args.dtype, max_length=args.max_length)
        model = (Reranker if args.kind == "rerank" else Embedder)(checkpoint, **engine_args)
        direct: Callable[[Request], Any] = (
            (lambda r: model.score(*r)) if isinstance(model, Reranker) else (lambda r: model.embed(r[1]))
        )
        results["device"], results["dtype"] = str(model.device), str(model.dtype)
        server, url = start_server(args, checkpoint)
        try:
            results["max_abs_diff"] = max_difference(url, args.kind, requests[:8], direct)
            print(
                f"random-weight {args.preset} {args.kind} model on {model.device} ({model.dtype}); {args.docs} "
                f"x {args.words}-word texts per request, {args.requests} requests per cell"
            )
            print(f"{'conc':>4} {'mode':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs direct':>9}")
            for concurrency in args.concurrency:
                warmup = requests[: 2 * concurrency]
                run_threads(direct, warmup, concurrency)
                run_async(model, warmup, concurrency, args.max_wait_ms)
                run_http(url, args.kind, warmup, concurrency)
                cell = {
                    "direct": run_threads(direct, requests, concurrency),
                    "async": run_async(model, requests, concurrency, args.max_wait_ms),
                    "http": run_http(url, args.kind, requests, concurrency),
                }
                for mode, r in cell.items():
                    r["ratio"] = r["rps"] / cell["direct"]["rps"]
                    numbers = f"{r['rps']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['ratio']:9.2f}"
                    print(f"{concurrency:>4} {mode:>6} {numbers}")
                results[f"concurrency_{concurrency}"] = cell
        finally:
            server.terminate()
            server.wait(timeout=60)
    top = max(args.concurrency)
    overhead = 1 - results[f"concurrency_{top}"]["http"]["ratio"]
    print(f"largest difference server vs direct: {results['max_abs_diff']:.2e}")
    verdict = "met" if overhead < 0.10 else "NOT met"
    print(f"serving overhead at concurrency {top}: {overhead:+.1%} (goal < 10%: {verdict})")
    results["overhead_at_max_concurrency"] = overhead
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def hostile(args: argparse.Namespace, requests: list[Request], results: dict[str, Any]) -> None:
    words = max(8, int(args.max_length / 1.2))  # about 1.4 tokens a word: each document is cut at max_length
    documents = passages(args.large_docs, words, words, seed=1)
    large = ("/rerank", {"query": "How do large requests share the engine?", "texts": documents, "truncate": True})
    small = [http_body("rerank", request) for request in requests]
    with tempfile.TemporaryDirectory(prefix="qrerank-serving-") as tmp:
        checkpoint = random_checkpoint(tmp, args.preset, "reranker")
        server, url = start_server(args, checkpoint, "--max-body-bytes", str(256 * 1024 * 1024))
        try:
            print(
                f"random-weight {args.preset} reranker, hostile: {max(args.concurrency)} small clients ({args.docs} x "
                f"{args.words} words), a large request of {args.large_docs} x {words} words, "
                f"{args.flood_clients} flooding clients"
            )
            outcome = run_hostile(url, small, large, max(args.concurrency), args.flood_clients, args.hostile_seconds)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print_hostile(outcome)
    results.update(scenario="hostile", large_docs=args.large_docs, large_words=words, hostile=outcome)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
