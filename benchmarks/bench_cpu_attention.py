"""bf16 CPU attention, the two plans of cpu_attention.py against torch's SDPA per sequence (their twin,
reference.attention) on the same packed batches, with each one's largest error to fp32 attention: SDPA with
key counts rounded up to 32 (the plan on AMX CPUs) and the GEMM form (the plan on other bf16 CPUs).

Qwen3-0.6B heads (16 query, 8 kv, 128 wide). Cases: single causal sequences of several lengths, and
documents after a shared prefix (a reranker request). Name the CPU (`lscpu`) next to its figures:
python benchmarks/bench_cpu_attention.py --threads 2 [--json attention.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from qrerank import cpu_features, reference
from qrerank.cpu_attention import plan_for
from qrerank.cpu_ops import FusedCpuOps

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128
CASES: list[tuple[str, list[int], int]] = [  # name, sequence lengths, shared prefix length (0: none)
    *((f"causal {n}", [n], 0) for n in (48, 96, 192, 320, 600, 1200, 3000)),
    ("16 docs of 60-300 after a 50-token prefix", [50, *range(60, 301, 16)], 50),
]


def _best_ms(fn: Callable[..., torch.Tensor], args: tuple[object, ...], repeats: int) -> tuple[float, torch.Tensor]:
    """The fastest of `repeats` calls after a warm-up one, in ms, and the last call's output."""
    out = fn(*args)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best * 1e3, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_features.model_name()}: {cpu_features.detect().describe()}, torch {torch.__version__}")
    cpu = torch.device("cpu")
    systems = {  # name -> attention(q, k, v, cu, max_seqlen, scale, offsets, lens)
        "SDPA": reference.attention,
        "SDPA keys/32": FusedCpuOps(torch.bfloat16, cpu, plan_for(torch.bfloat16, amx=True)).attention,
        "GEMMs": FusedCpuOps(torch.bfloat16, cpu, plan_for(torch.bfloat16, amx=False)).attention,
    }
    print(f"{'case':44s} " + "".join(f"{name + ' ms':>16s}" for name in systems) + "   GEMMs/SDPA   max error to fp32")
    rows = []
    torch.manual_seed(0)
    for name, lengths, prefix in CASES:
        t = sum(lengths)
        q, k, v = (torch.randn(t, h, HEAD_DIM).bfloat16() for h in (HEADS, KV_HEADS, KV_HEADS))
        cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
        offsets = torch.zeros(len(lengths), dtype=torch.int32)
        lens = torch.tensor([0] + [prefix] * (len(lengths) - 1), dtype=torch.int32)
        call = (cu, max(lengths), HEAD_DIM**-0.5, offsets, lens)
        exact = reference.attention(q.float(), k.float(), v.float(), *call)
        results = {system: _best_ms(attention, (q, k, v, *call), args.repeats) for system, attention in systems.items()}
        ms = {system: best for system, (best, _) in results.items()}
        errors = {system: (out.float() - exact).abs().max().item() for system, (_, out) in results.items()}
        rows.append({"case": name, "ms": ms, "max_error": errors})
        times = "".join(f"{ms[system]:16.2f}" for system in systems)
        error_text = " / ".join(f"{e:.4f}" for e in errors.values())
        print(f"{name:44s} {times}   x{ms['SDPA'] / ms['GEMMs']:<10.2f}  {error_text}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
