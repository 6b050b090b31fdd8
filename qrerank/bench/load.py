"""Peak host memory while loading a checkpoint, relative to the size of the loaded weights.

Run in a fresh process (`python -m qrerank.bench.load DIR --dtype bfloat16`) so that nothing else
has touched the heap: the kernel's resident-size high-water mark is reset after the imports, the
engine is built, and the mark is read back. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from qrerank import Embedder, Reranker
from qrerank.bench.measure import memory_status


def measure(model: Path, kind: str, dtype: str) -> dict[str, float]:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    base = memory_status("VmRSS")
    start = time.perf_counter()
    # backend="torch": the load alone. The CPU ops' one-off compile at construction (Inductor's modules and
    # compiled kernels, a few hundred MB resident whatever the model size) is not part of loading.
    engine = (Reranker if kind == "reranker" else Embedder)(model, device="cpu", dtype=dtype, backend="torch")
    seconds = time.perf_counter() - start
    weights = engine.engine.model.weights
    tensors = [weights.embed, weights.norm] + [t for layer in weights.layers for t in vars(layer).values()]
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
    peak = memory_status("VmHWM") - base
    return {
        "weights_mb": weight_bytes / 2**20,
        "peak_mb": peak / 2**20,
        "ratio": peak / weight_bytes,
        "seconds": seconds,
        "dtype": str(engine.dtype),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--kind", choices=["reranker", "embedding"], default="reranker")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.kind, args.dtype)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
