"""The "hostile" scenario of bench_serving.py: small requests and /health beside a large request, then beside a
flood of invalid 4 MiB bodies, against a `qrerank serve` subprocess.

Phases, each reporting small-request p50/p99/max and /health p99/max latency:
  idle    the small requests alone (the reference)
  large   while one large request runs (its time alone and beside them, and the largest score difference
          between the two runs, are reported too: fair scheduling must not change its results)
  flood   while --flood-clients threads post 4 MiB bodies of wrongly typed documents ([1, 1, ...] and
          [{}, {}, ...]), each answered 413 as a list over the server's bound, with their latencies
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

FLOOD_BYTES = 4 * 1024 * 1024


class Client:
    """One keep-alive connection per thread."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.local = threading.local()

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if not hasattr(self.local, "connection"):
            self.local.connection = http.client.HTTPConnection(self.host, self.port, timeout=600)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self.local.connection.request(method, path, body, headers)
            response = self.local.connection.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            del self.local.connection  # closed by the server: the next call reconnects
            raise


class Repeat:
    """`call` in `threads` threads until stopped, timing each call."""

    def __init__(self, call: Callable[[], int], threads: int, expect: int = 200, pause_s: float = 0.0) -> None:
        self.latencies: list[float] = []
        self.failures = 0
        self._call, self._expect, self._pause_s, self._stop = call, expect, pause_s, threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                ok = self._call() == self._expect
            except (http.client.HTTPException, OSError):
                ok = False
            self.latencies.append(time.perf_counter() - start)
            self.failures += not ok
            self._stop.wait(self._pause_s)

    def __enter__(self) -> Repeat:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def stats(self) -> dict[str, float]:
        ms = np.array(self.latencies or [float("nan")]) * 1e3
        return {
            "count": len(self.latencies),
            "failures": self.failures,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
        }


def _flood_bodies() -> list[bytes]:
    prefix = b'{"query": "q", "documents": ['
    return [prefix + b",".join([item] * ((FLOOD_BYTES - 64) // (len(item) + 1))) + b"]}" for item in (b"1", b"{}")]


def run_hostile(
    url: str,
    small: list[tuple[str, dict[str, Any]]],
    large: tuple[str, dict[str, Any]],
    clients: int,
    flood_clients: int,
    seconds: float,
) -> dict[str, Any]:
    """`small`: (route, body) requests cycled by `clients` threads; `large`: the one large request, to TEI's
    /rerank (which answers a list of {index, score})."""
    client = Client(url)
    encoded = [(route, json.dumps(body).encode()) for route, body in small]
    turn = itertools.count()

    def small_call() -> int:
        route, body = encoded[next(turn) % len(encoded)]
        return client.call("POST", route, body)[0]

    def health_call() -> int:
        return client.call("GET", "/health")[0]

    def phase(during: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
        # /health as a load balancer polls it: every 5 ms
        with Repeat(small_call, clients) as smalls, Repeat(health_call, 1, pause_s=0.005) as health:
            outcome = during()
        return {"small": smalls.stats(), "health": health.stats()}, outcome

    def timed_large() -> tuple[float, list[float]]:
        route, body = large
        start = time.perf_counter()
        status, answer = client.call("POST", route, json.dumps(body).encode())
        if status != 200:
            raise RuntimeError(f"the large request got {status}: {answer[:200]!r}")
        by_index = sorted(json.loads(answer), key=lambda result: result["index"])  # TEI answers best first
        return time.perf_counter() - start, [result["score"] for result in by_index]

    results: dict[str, Any] = {}
    results["idle"], _ = phase(lambda: time.sleep(seconds))
    alone_s, alone = timed_large()
    results["large"], (beside_s, beside) = phase(timed_large)
    results["large"].update(
        alone_s=alone_s, beside_small_s=beside_s, max_score_diff=float(np.abs(np.subtract(alone, beside)).max())
    )
    bodies = _flood_bodies()
    flood_turn = itertools.count()

    def flood_call() -> int:
        return client.call("POST", "/v1/rerank", bodies[next(flood_turn) % 2])[0]

    with Repeat(flood_call, flood_clients, expect=413) as flood:
        results["flood"], _ = phase(lambda: time.sleep(seconds))
    results["flood"]["invalid_bodies"] = flood.stats()
    return results


def print_hostile(results: dict[str, Any]) -> None:
    print(f"{'phase':>6} {'small p50':>10} {'p99':>8} {'max ms':>8} {'health p99':>11} {'max ms':>8} {'failed':>6}")
    for name in ("idle", "large", "flood"):
        small, health = results[name]["small"], results[name]["health"]
        numbers = f"{small['p50_ms']:10.1f} {small['p99_ms']:8.1f} {small['max_ms']:8.1f}"
        print(f"{name:>6} {numbers} {health['p99_ms']:11.1f} {health['max_ms']:8.1f} {small['failures']:6d}")
    large = results["large"]
    print(
        f"large request: {large['alone_s']:.2f} s alone, {large['beside_small_s']:.2f} s beside the small ones, "
        f"largest score difference {large['max_score_diff']:.1e}"
    )
    flood = results["flood"]["invalid_bodies"]
    print(
        f"4 MiB invalid bodies: {flood['count']} answered 413 (failures {flood['failures']}), "
        f"p50 {flood['p50_ms']:.1f} ms, max {flood['max_ms']:.1f} ms"
    )
