"""benchmarks/summarize.py on what a cut-short device check leaves behind: a truncated junit report, a skipped
step, a timed-out step and a benchmark JSON that stopped part way. The summary must still be written, say
what happened, and invent nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
skipped="1" tests="3"><testcase classname="tests.test_gpu" name="test_a" time="1.0" /><testcase
classname="tests.test_gpu" name="test_b" time="2.0"><failure message="AssertionError: 0.3 &gt; 0.1">trace
</failure></testcase><testcase classname="tests.test_gpu" name="test_c"><skipped message="no" /></testcase>
</testsuite></testsuites>"""


@pytest.fixture(scope="module")
def summarize(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("summarize")


def test_junit_report_counts_and_failures(summarize: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "gpu_tests.xml").write_text(JUNIT)
    report = summarize.read_junit(tmp_path / "gpu_tests.xml")
    assert (report["complete"], report["tests"], report["passed"], report["failed"], report["skipped"]) == (
        True, 3, 1, 1, 1,
    )  # fmt: skip
    assert report["failures"] == ["tests.test_gpu::test_b: AssertionError: 0.3 > 0.1"]


def test_a_cut_short_run_still_gets_its_summary(summarize: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "gpu_tests.xml").write_text(JUNIT[: JUNIT.index('<testcase classname="tests.test_gpu" name="test_c"')])
    steps = ["install\t0\t31\t60\t", "gpu_tests\t124\t95\t95\tKeyboardInterrupt", "e2e\t124\t75\t75\t"]
    steps.append("serving\tskipped\t0\t75\tfastapi not installed")
    (tmp_path / "steps.tsv").write_text("\n".join(steps) + "\n")
    first = {"cold": {"first_score_ms": 2500.0, "next_score_ms": 9.0}}
    first["warm"] = {"warmup_s": 1.5, "first_score_ms": 9.5, "next_score_ms": 9.1}
    e2e = {"device": "H200", "card": {"matmul_tflops": 790.0, "copy_gbps": 4300.0}, "0.6B": {"first_score": first}}
    (tmp_path / "e2e.json").write_text(json.dumps(e2e))
    text = summarize.main(tmp_path)
    assert "| step gpu_tests | timed out: KeyboardInterrupt, 95 s of 95 s |" in text
    assert "| step serving | skipped: fastapi not installed, 0 s of 75 s |" in text
    assert "gpu tests (stopped at the time limit) (truncated XML" in text and "2 tests reported, 1 failed" in text
    assert "cold 2500 ms; after a 1.5 s warm-up 9.5 ms" in text
    assert "score 1x100" not in text and "serving.json" not in text  # nothing invented for what did not run
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["results"]["e2e"] == e2e and summary["tests"]["gpu_tests"]["complete"] is False
    assert (tmp_path / "summary.md").read_text() == text + "\n"
