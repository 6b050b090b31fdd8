"""One summary table of a device_check.sh run: each step's status, then every headline figure against its goal.

python benchmarks/summarize.py RESULTS_DIR

Reads the JSON the benchmarks wrote (a missing file is reported as such, never invented) and prints a
markdown table, ready to paste into benchmarks/RESULTS.md; also writes it to RESULTS_DIR/summary.md.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = tuple[str, str, str]  # figure, value, goal (with met / NOT met)


def _goal(value: float, target: float, higher_is_better: bool, text: str) -> str:
    met = value >= target if higher_is_better else value <= target
    return f"{text}: {'met' if met else 'NOT met'}"


def steps(out: Path) -> list[Row]:
    rows = []
    for line in (out / "steps.txt").read_text().splitlines() if (out / "steps.txt").exists() else []:
        name, rc, seconds = line.split()
        status = "ok" if rc == "0" else ("timed out" if rc in ("124", "137") else f"failed (rc {rc})")
        rows.append((f"step {name}", f"{status}, {seconds} s", ""))
    report = out / "gpu_tests.xml"
    if report.exists():
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        rows.append(
            (
                "GPU tests",
                f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped",
                "",
            )
        )
    return rows


def kernels(data: dict[str, Any]) -> list[Row]:
    rows = [
        (
            "card (kernel bench)",
            f"{data['card']['matmul_tflops']:.0f} TFLOP/s bf16, {data['card']['copy_gbps']:.0f} GB/s",
            "",
        )
    ]
    for r in data["attention"]:
        goal = ""
        if r["provider"] == "qrerank" and r["case"] == "32 x 512":
            goal = _goal(r["tflops"], 200, True, ">= 200 TFLOP/s (H100)")
        rows.append((f"attention {r['case']}, {r['provider']}", f"{r['tflops']:.0f} TFLOP/s ({r['ms']:.3f} ms)", goal))
    for r in data["norms"]:
        goal = _goal(r["fraction_of_copy"], 0.75, True, ">= 75% of copy bandwidth")
        value = f"{r['gbps']:.0f} GB/s = {r['fraction_of_copy']:.0%} of copy, x{r['speedup_vs_torch']:.2f} vs torch"
        rows.append((f"{r['op']} (T=16384)", value, goal))
    return rows


def e2e(data: dict[str, Any]) -> list[Row]:
    rows = [
        (
            "card (e2e bench)",
            f"{data['card']['matmul_tflops']:.0f} TFLOP/s bf16, {data['card']['copy_gbps']:.0f} GB/s",
            "",
        )
    ]
    for preset, result in data.items():
        if not isinstance(result, dict) or "score_1x100" not in result:
            continue
        one = result["score_1x100"]
        ours, theirs = one["qrerank"], one["official"]
        goal = _goal(one["speedup"], 5, True, ">= 5x official") if preset == "0.6B" else ""
        rows.append((
            f"{preset} score 1x100 docs/s",
            f"{ours['items_per_s']:.0f} vs {theirs['items_per_s']:.0f} official = x{one['speedup']:.2f}",
            goal,
        ))  # fmt: skip
        goal = _goal(ours["mfu"], 0.45, True, ">= 45% of matmul rate") if preset == "0.6B" else ""
        rows.append((f"{preset} score 1x100 MFU", f"{ours['mfu']:.0%} (official {theirs['mfu']:.0%})", goal))
        rows.append((
            f"{preset} score 1x100 p50/p95, peak",
            f"{ours['p50_ms']:.1f}/{ours['p95_ms']:.1f} ms, {ours['peak_memory_mb']:.0f} MB "
            f"(official {theirs['p50_ms']:.1f}/{theirs['p95_ms']:.1f} ms, {theirs['peak_memory_mb']:.0f} MB)",
            f"max score diff {one['max_abs_score_diff']:.3f}",
        ))  # fmt: skip
        prefix = result["prefix"]
        rows.append((
            f"{preset} shared prefix",
            f"x{prefix['speedup']:.2f} faster, {prefix['tokens_saved_fraction']:.0%} of tokens not recomputed",
            "",
        ))  # fmt: skip
        lat = result["latency_1x20"]
        rows.append((
            f"{preset} latency 1x20 p50",
            f"{lat['p50_ms']:.2f} ms (floor {lat['floor_ms']:.2f} ms)",
            _goal(lat["p50_ms"], lat["goal_ms"], False, f"<= 1.3 floor + 2 ms = {lat['goal_ms']:.2f} ms"),
        ))  # fmt: skip
        if "score_32x100" in result:
            many = result["score_32x100"]
            rows.append((
                f"{preset} score 32x100 docs/s",
                f"{many['qrerank']['items_per_s']:.0f} vs {many['official']['items_per_s']:.0f} official "
                f"= x{many['speedup']:.2f}, MFU {many['qrerank']['mfu']:.0%}",
                "",
            ))  # fmt: skip
        if "spearman_bf16_vs_fp32" in result:
            rho = result["spearman_bf16_vs_fp32"]
            rows.append(
                (f"{preset} bf16 vs fp32 Spearman (1000 pairs)", f"{rho:.4f}", _goal(rho, 0.99, True, ">= 0.99"))
            )
        if "embed_10k" in result:
            emb = result["embed_10k"]
            rows.append((
                f"{preset} embed 10k texts/s",
                f"{emb['qrerank']['items_per_s']:.0f} vs {emb['official']['items_per_s']:.0f} official "
                f"= x{emb['speedup']:.2f}, MFU {emb['qrerank']['mfu']:.0%}",
                f"min cosine {emb['min_cosine']:.4f}",
            ))  # fmt: skip
            if "sentence_transformers" in emb:
                rows.append((
                    f"{preset} embed 10k vs sentence-transformers",
                    f"{emb['sentence_transformers']['items_per_s']:.0f} texts/s; qrerank "
                    f"x{emb['speedup_vs_sentence_transformers']:.2f}",
                    f"min cosine {emb['min_cosine_vs_sentence_transformers']:.4f}",
                ))  # fmt: skip
    return rows


def serving(data: dict[str, Any]) -> list[Row]:
    if "skipped" in data:
        return [("serving", data["skipped"], "")]
    rows = []
    for key, cell in data.items():
        if key.startswith("concurrency_"):
            c = key.removeprefix("concurrency_")
            http, direct = cell["http"], cell["direct"]
            rows.append((
                f"serving HTTP, concurrency {c}",
                f"{http['rps']:.1f} req/s vs {direct['rps']:.1f} direct (x{http['ratio']:.2f}), p50/p99 "
                f"{http['p50_ms']:.1f}/{http['p99_ms']:.1f} ms",
                _goal(http["ratio"], 0.9, True, "overhead < 10%") if c == "32" else "",
            ))  # fmt: skip
    return rows


def topk(data: dict[str, Any]) -> list[Row]:
    rows = []
    for r in data["runs"]:
        goal = ""
        if r["m"] <= 64:
            goal = _goal(r["fraction_of_copy_bandwidth"], 0.8, True, ">= 80% of copy bandwidth")
        elif r["m"] >= 1024:
            goal = _goal(r["speedup"], 2.5, True, ">= 2.5x torch")
        value = (
            f"{r['qrerank_ms']:.3f} ms, {r['GBps']:.0f} GB/s, {r['TFLOPps']:.0f} TFLOP/s, "
            f"x{r['speedup']:.2f} vs torch, rows equal {r['same_rows_as_torch_path']:.0%}"
        )
        rows.append((f"top-k n={data['n']} d={data['d']} k={data['k']} m={r['m']}", value, goal))
    return rows


SECTIONS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "kernels.json": kernels,
    "e2e.json": e2e,
    "topk.json": topk,
    "serving.json": serving,
}


def main(out: Path) -> str:
    rows = steps(out)
    for name, section in SECTIONS.items():
        path = out / name
        if not path.exists():
            rows.append((name, "missing (the step failed or did not run)", ""))
            continue
        try:
            rows += section(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as error:
            rows.append((name, f"unreadable: {type(error).__name__}: {error}", ""))
    gpu = (out / "gpu.csv").read_text().splitlines()[-1] if (out / "gpu.csv").exists() else "unknown GPU"
    table = [f"GPU: {gpu}", "", "| figure | value | goal |", "|---|---|---|"]
    table += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = "\n".join(table)
    (out / "summary.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/summarize.py RESULTS_DIR")
    print(main(Path(sys.argv[1])))
