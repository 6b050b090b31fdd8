"""One summary of a device_check.sh run: each step's status, the GPU tests, then every headline figure against its goal.

python benchmarks/summarize.py RESULTS_DIR

Reads what the steps left in RESULTS_DIR (steps.tsv, junit XML, the benchmarks' JSON; a missing or partial
file is reported as such, never invented) and writes RESULTS_DIR/summary.md (a markdown table, ready to
paste into benchmarks/RESULTS.md) and RESULTS_DIR/summary.json (the same rows, the step records, the test
counts and the benchmarks' own JSON); prints the table.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = tuple[str, str, str]  # figure, value, goal (with met / NOT met)
JUNIT = {"gpu_tests": "gpu_tests.xml"}


def _goal(value: float, target: float, higher_is_better: bool, text: str) -> str:
    met = value >= target if higher_is_better else value <= target
    return f"{text}: {'met' if met else 'NOT met'}"


def read_steps(out: Path) -> list[dict[str, Any]]:
    """steps.tsv: name, exit status (or "skipped"), seconds, limit, detail (tab-separated, one step a line)."""
    path = out / "steps.tsv"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, seconds, limit, detail = (line.split("\t") + [""] * 5)[:5]
        if rc == "skipped":
            status = f"skipped: {detail}"
        elif rc == "0":
            status = "ok"
        else:
            status = ("timed out" if rc in ("124", "137") else f"failed (rc {rc})") + (f": {detail}" if detail else "")
        steps.append({"name": name, "rc": rc, "status": status, "seconds": seconds, "limit": limit})
    return steps


def read_junit(path: Path) -> dict[str, Any]:
    """Counts and failed test names of a junit XML file; a file cut short (a killed run) is counted by its tags."""
    text = path.read_text(errors="replace")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        cases = re.findall(r"<testcase\b[^>]*\bname=\"([^\"]*)\"", text)
        failed = len(re.findall(r"<(?:failure|error)\b", text))
        skipped = len(re.findall(r"<skipped\b", text))
        return {"complete": False, "note": f"truncated XML ({error})", "tests": len(cases), "failed": failed,
                "skipped": skipped, "passed": None, "failures": []}  # fmt: skip
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failures = []
    for case in root.iter("testcase"):
        problem = case.find("failure")
        problem = problem if problem is not None else case.find("error")
        if problem is not None:
            message = (problem.get("message") or "").strip().splitlines()
            failures.append(f"{case.get('classname', '')}::{case.get('name', '')}: {message[0] if message else ''}")
    failed = counts["failures"] + counts["errors"]
    passed = counts["tests"] - failed - counts["skipped"]
    return {"complete": True, "tests": counts["tests"], "failed": failed, "skipped": counts["skipped"],
            "passed": passed, "failures": failures}  # fmt: skip


def test_rows(name: str, report: dict[str, Any]) -> list[Row]:
    if not report["complete"]:
        value = f"{report['tests']} tests reported, {report['failed']} failed, {report['skipped']} skipped"
        return [(f"{name} ({report['note']})", value, "")]
    rows = [(name, f"{report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped", "")]
    rows += [(f"{name} FAILED", failure[:300], "") for failure in report["failures"][:20]]
    return rows


def _card(data: dict[str, Any], name: str) -> list[Row]:
    if "card" not in data:
        return []
    card = data["card"]
    return [(f"card ({name})", f"{card['matmul_tflops']:.0f} TFLOP/s bf16, {card['copy_gbps']:.0f} GB/s", "")]


def kernels(data: dict[str, Any]) -> list[Row]:
    rows = _card(data, "kernel bench")
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


def _preset(preset: str, result: dict[str, Any]) -> list[Row]:
    """The rows of one preset's e2e results: each measurement that finished (the JSON grows as they do)."""
    rows = []
    if "first_score" in result:
        cold, warm = result["first_score"]["cold"], result["first_score"]["warm"]
        rows.append((
            f"{preset} first score 1x4 (new engine)",
            f"cold {cold['first_score_ms']:.0f} ms; after a {warm['warmup_s']:.1f} s warm-up "
            f"{warm['first_score_ms']:.1f} ms (later scores {warm['next_score_ms']:.1f} ms)",
            "",
        ))  # fmt: skip
    if "score_1x100" in result:
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
    if "latency_1x20" in result:
        lat = result["latency_1x20"]
        rows.append((
            f"{preset} latency 1x20 p50",
            f"{lat['p50_ms']:.2f} ms (floor {lat['floor_ms']:.2f} ms)",
            _goal(lat["p50_ms"], lat["goal_ms"], False, f"<= 1.3 floor + 2 ms = {lat['goal_ms']:.2f} ms"),
        ))  # fmt: skip
    if "prefix" in result:
        prefix = result["prefix"]
        rows.append((
            f"{preset} shared prefix",
            f"x{prefix['speedup']:.2f} faster, {prefix['tokens_saved_fraction']:.0%} of tokens not recomputed",
            "",
        ))  # fmt: skip
    if "spearman_bf16_vs_fp32" in result:
        rho = result["spearman_bf16_vs_fp32"]
        rows.append((f"{preset} bf16 vs fp32 Spearman (1000 pairs)", f"{rho:.4f}", _goal(rho, 0.99, True, ">= 0.99")))
    if "score_32x100" in result:
        many = result["score_32x100"]
        rows.append((
            f"{preset} score 32x100 docs/s",
            f"{many['qrerank']['items_per_s']:.0f} vs {many['official']['items_per_s']:.0f} official "
            f"= x{many['speedup']:.2f}, MFU {many['qrerank']['mfu']:.0%}",
            "",
        ))  # fmt: skip
    if "embed" in result:
        emb = result["embed"]
        rows.append((
            f"{preset} embed {emb['texts']} passages, texts/s",
            f"{emb['qrerank']['items_per_s']:.0f} vs {emb['official']['items_per_s']:.0f} official "
            f"= x{emb['speedup']:.2f}, MFU {emb['qrerank']['mfu']:.0%}",
            f"min cosine {emb['min_cosine']:.4f}",
        ))  # fmt: skip
        if "sentence_transformers" in emb:
            rows.append((
                f"{preset} embed vs sentence-transformers",
                f"{emb['sentence_transformers']['items_per_s']:.0f} texts/s; qrerank "
                f"x{emb['speedup_vs_sentence_transformers']:.2f}",
                f"min cosine {emb['min_cosine_vs_sentence_transformers']:.4f}",
            ))  # fmt: skip
    return rows


def e2e(data: dict[str, Any]) -> list[Row]:
    rows = _card(data, "e2e bench")
    for preset, result in data.items():
        if isinstance(result, dict) and preset != "card":
            rows += _preset(preset, result)
    return rows


def parity(data: dict[str, Any]) -> list[Row]:
    value = (
        f"max abs score error {data['max_abs_error']:.2e} (official bf16 {data['official_bf16_max_abs_error']:.2e}), "
        f"mean {data['mean_abs_error']:.2e} (official bf16 {data['official_bf16_mean_abs_error']:.2e})"
    )
    verdict = "met" if data["passed"] else "NOT met"
    return [("0.6B bf16 parity vs official fp32", value, f"<= 2x official bf16's error + 1e-3: {verdict}")]


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


# step name -> (its JSON file, its rows)
SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[Row]]]] = {
    "parity": ("parity.json", parity),
    "kernels": ("kernels.json", kernels),
    "topk": ("topk.json", topk),
    "e2e": ("e2e.json", e2e),
    "serving": ("serving.json", serving),
}


def main(out: Path) -> str:
    steps = read_steps(out)
    rows: list[Row] = [(f"step {s['name']}", f"{s['status']}, {s['seconds']} s of {s['limit']} s", "") for s in steps]
    tests, results = {}, {}
    timed_out = {s["name"] for s in steps if s["rc"] in ("124", "137")}
    for name, file in JUNIT.items():
        if (out / file).exists():
            tests[name] = read_junit(out / file)
            label = name.replace("_", " ") + (" (stopped at the time limit)" if name in timed_out else "")
            rows += test_rows(label, tests[name])
    ran = {s["name"] for s in steps if s["rc"] != "skipped"}
    for name, (file, section) in SECTIONS.items():
        path = out / file
        if not path.exists():
            if name in ran:
                rows.append((file, "missing (the step stopped before writing it)", ""))
            continue
        try:
            results[name] = json.loads(path.read_text())
            rows += section(results[name])
        except (KeyError, TypeError, ValueError) as error:
            rows.append((file, f"unreadable: {type(error).__name__}: {error}", ""))
    gpu = (out / "gpu.csv").read_text().strip().splitlines()[-1] if (out / "gpu.csv").exists() else "unknown GPU"
    table = [f"GPU: {gpu}", "", "| figure | value | goal |", "|---|---|---|"]
    table += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    text = "\n".join(table)
    (out / "summary.md").write_text(text + "\n")
    environment = (out / "environment.txt").read_text() if (out / "environment.txt").exists() else ""
    summary = {"gpu": gpu, "environment": environment, "steps": steps, "tests": tests, "rows": rows, "results": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return text


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/summarize.py RESULTS_DIR")
    print(main(Path(sys.argv[1])))
