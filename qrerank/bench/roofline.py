"""What the card can do, measured in the same run: bf16 matmul rate and copy bandwidth; and model FLOPs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from qrerank.config import ModelConfig


def cuda_times_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> list[float]:
    """Per-call device times of `fn` (CUDA events around each call), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def matmul_tflops(device: torch.device, n: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """Dense [n, n] @ [n, n] rate in TFLOP/s (median): the ceiling every model-FLOP fraction is quoted against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    ms = float(np.median(cuda_times_ms(lambda: torch.mm(a, b, out=out))))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_gbps(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy in GB/s, counting bytes read plus bytes written (median)."""
    src = torch.empty(nbytes // 2, device=device, dtype=torch.bfloat16).uniform_()
    dst = torch.empty_like(src)
    ms = float(np.median(cuda_times_ms(lambda: dst.copy_(src))))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def model_flops(config: ModelConfig, lengths: Sequence[int]) -> float:
    """Nominal forward FLOPs of the sequences run whole: every linear layer on every token plus causal
    attention (QK^T and PV over the lower triangle), no LM head. Work a system skips (shared prefixes,
    the last layer's MLP on non-final tokens) still counts, so this is the same yardstick for everyone."""
    h, d = config.hidden_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    linear = h * (q + 2 * kv) + q * h + 3 * h * config.intermediate_size  # weights per layer
    tokens = float(sum(lengths))
    causal_pairs = float(sum(n * (n + 1) / 2 for n in lengths))
    per_layer = 2 * linear * tokens + 2 * 2 * causal_pairs * q
    return config.num_hidden_layers * per_layer
