"""What a 4 MiB text costs when only max_length tokens of it can be used: bounded encoding against
encoding the whole text and cutting (what qrerank did before), on the same texts, in this process.

python benchmarks/bench_long_text.py [--mib 4] [--limit 8192]

For each kind of text: seconds and peak resident growth (the kernel's high-water mark, reset before each
measurement) of `BoundedEncoder.encode` and of `Tokenizer.encode(text).ids[:limit]`, with the ids checked
equal; then one `Reranker.score(query, [text])` end to end (tiny random checkpoint, truncation on), the
library path that a served request with `truncate: true` takes too.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tokenizers import Tokenizer

from qrerank import Reranker
from qrerank.bench.measure import memory_status
from qrerank.bounded import BoundedEncoder
from qrerank.testing import random_checkpoint
from qrerank.tokenize import bundled_tokenizer_json


def texts(chars: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    words = "the of and river capital question model engine token batch prefix".split()
    prose = " ".join(rng.choice(words) for _ in range(chars // 5))
    return {
        "prose": prose[:chars],
        "letters (no spaces)": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=chars)),
        "one letter": "a" * chars,
        "CJK": "".join(rng.choices("中文日本語한국어的是了", k=chars // 3)),
        "digits": "".join(rng.choices("0123456789", k=chars)),
        "emoji": "🚀👍🏽" * (chars // 12),
    }


def measured(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """fn(*args), its seconds and its peak resident growth in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM starts again from the current resident size
    base = memory_status("VmRSS")
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start, (memory_status("VmHWM") - base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=4.0, help="size of each text, UTF-8")
    parser.add_argument("--limit", type=int, default=8192, help="tokens wanted (max_length)")
    args = parser.parse_args()
    tokenizer = Tokenizer.from_str(bundled_tokenizer_json())
    encoder = BoundedEncoder(tokenizer)
    print(f"{'text':<20} {'MiB':>5} {'bounded s':>10} {'MB':>6} {'whole s':>8} {'MB':>6} {'speed-up':>9}")
    limit = args.limit
    samples = {name: s * max(1, round(args.mib * 2**20 / len(s.encode()))) for name, s in texts(1 << 20).items()}
    for name, text in samples.items():
        (ids, _), fast_s, fast_mb = measured(lambda t: encoder.encode([t], [limit])[0], text)
        whole, slow_s, slow_mb = measured(lambda t: tokenizer.encode(t, add_special_tokens=False).ids[:limit], text)
        assert ids == whole, f"{name}: bounded encoding differs from whole encoding and cutting"
        mib = len(text.encode()) / 2**20
        print(f"{name:<20} {mib:5.1f} {fast_s:10.3f} {fast_mb:6.0f} {slow_s:8.2f} {slow_mb:6.0f} ", end="")
        print(f"{slow_s / fast_s:8.0f}x")

    with tempfile.TemporaryDirectory(prefix="qrerank-long-") as tmp:
        reranker = Reranker(random_checkpoint(tmp, "tiny", "reranker"), device="cpu", max_length=args.limit)
        reranker.score("warm-up", ["a short document"])
        for name, text in samples.items():
            _, seconds, mb = measured(lambda t: reranker.score("what is this?", [t]), text)
            print(f"Reranker.score, one {args.mib:.1f} MiB {name} document: {seconds:.3f} s, +{mb:.0f} MB")


if __name__ == "__main__":
    main()
