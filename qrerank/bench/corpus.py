"""Benchmark text: passages and queries cut from the English prose of `pydoc_data.topics` (ships with Python)."""

from __future__ import annotations

import random
from pydoc_data.topics import topics


def passages(count: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    """`count` passages of uniformly random length in words, taken from successive help topics."""
    rng = random.Random(seed)
    words = [w for name in sorted(topics) for w in topics[name].split()]
    out = []
    start = 0
    for _ in range(count):
        n = rng.randint(min_words, max_words)
        if start + n > len(words):
            start = 0
        out.append(" ".join(words[start : start + n]))
        start += n
    return out


def queries(count: int, seed: int = 0) -> list[str]:
    """Questions about Python help topics, e.g. 'How does augassign work in Python?'."""
    names = sorted(topics)
    rng = random.Random(seed)
    return [f"How does {rng.choice(names).replace('-', ' ')} work in Python?" for _ in range(count)]
