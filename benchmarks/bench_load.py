"""Load time and peak host memory for a real-shape checkpoint, per target dtype (each in a fresh process).

python benchmarks/bench_load.py --preset 0.6B --stored bfloat16
"""

import argparse
import json
import subprocess
import sys
import tempfile

import torch

from qrerank.testing import PRESETS, random_checkpoint

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="0.6B", choices=list(PRESETS))
    parser.add_argument("--stored", default="bfloat16", help="dtype of the checkpoint file")
    parser.add_argument("--targets", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qrerank-load-") as tmp:
        path = random_checkpoint(tmp, args.preset, "reranker", dtype=getattr(torch, args.stored))
        print(f"random-weight {args.preset} reranker stored as {args.stored}")
        print(f"{'target':<10} {'weights MB':>11} {'peak MB':>9} {'ratio':>6} {'load s':>7}")
        for target in args.targets:
            out = subprocess.run(
                [sys.executable, "-m", "qrerank.bench.load", str(path), "--dtype", target],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{target:<10} {r['weights_mb']:11.0f} {r['peak_mb']:9.0f} {r['ratio']:6.2f} {r['seconds']:7.1f}")
