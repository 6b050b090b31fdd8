"""`qrerank serve` as a real process: served names default to the paths, SIGTERM finishes requests in flight."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from qrerank import Reranker  # noqa: E402
from qrerank.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(reranker_dir: Path, embedding_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    argv = [sys.executable, "-m", "qrerank.cli", "serve", "--model", str(reranker_dir)]
    argv += ["--embedding-model", str(embedding_dir), "--port", str(port), "--device", "cpu", "--max-length", "256"]
    argv += ["--dtype", "float32"]  # compared with the fp32 fixture below
    argv += ["--max-wait-ms", "1000", "--log-level", "warning"]  # a long wait: a request stays in flight
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"qrerank serve exited with {process.returncode}: {process.stdout.read()!r}")  # type: ignore[union-attr]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("qrerank serve did not answer /health within 120 s")
            time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_served_names_default_to_the_model_paths(
    served: tuple[subprocess.Popen[bytes], str], reranker_dir: Path, embedding_dir: Path
) -> None:
    _, url = served
    names = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
    assert names == [str(reranker_dir), str(embedding_dir)]


def test_sigterm_finishes_the_request_in_flight(
    served: tuple[subprocess.Popen[bytes], str], reranker: Reranker
) -> None:
    process, url = served
    answers: list[httpx.Response] = []
    body = {"query": "capital of France", "documents": ["Paris.", "Bananas."]}
    request = threading.Thread(target=lambda: answers.append(httpx.post(url + "/v1/rerank", json=body, timeout=60)))
    request.start()
    time.sleep(0.3)  # the request now waits in the batcher (up to 1 s)
    process.send_signal(signal.SIGTERM)
    request.join(timeout=60)
    # uvicorn re-raises the signal once it has shut down gracefully (older releases exit 0)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert len(answers) == 1 and answers[0].status_code == 200
    scores = {r["index"]: r["relevance_score"] for r in answers[0].json()["results"]}
    np.testing.assert_allclose([scores[0], scores[1]], reranker.score(body["query"], body["documents"]), atol=1e-6)


def test_serve_refuses_bad_arguments_before_loading(
    capsys: pytest.CaptureFixture[str], reranker_dir: Path, embedding_dir: Path
) -> None:
    assert main(["serve"]) == 2
    assert "give --model" in capsys.readouterr().err
    argv = ["serve", "--model", str(reranker_dir), "--embedding-model", str(embedding_dir)]
    assert main([*argv, "--served-model-name", "m", "--served-embedding-model-name", "m"]) == 2
    assert "both named 'm'" in capsys.readouterr().err
    assert main([*argv, "--max-inputs", "0"]) == 2
    assert "max_inputs must be >= 1, got 0" in capsys.readouterr().err
