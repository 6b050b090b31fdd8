"""What the card or CPU can do, measured in the same run: matmul rate (and a card's copy bandwidth); model FLOPs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from qrerank.config import ModelConfig


def cuda_time_ms(
    fn: Callable[..., object], *args: object, flush: torch.Tensor | None = None, warmup: int = 5, repeats: int = 30
) -> float:
    """Median device milliseconds of fn(*args) (CUDA events around each call), after `warmup` untimed calls.

    With `flush` (a buffer larger than L2), it is overwritten before every timed call, outside the events,
    so each call starts from cold caches as it would in a model.
    """
    for _ in range(warmup):
        fn(*args)
    samples = []
    for _ in range(repeats):
        if flush is not None:
            flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return float(np.median(samples))


def l2_flush_buffer() -> torch.Tensor:
    return torch.empty(2**27, device="cuda", dtype=torch.float16)  # 256 MiB, above any current L2


def measure_card(flush: torch.Tensor | None = None) -> dict[str, float]:
    """The card's bf16 matmul rate (an 8192^3 GEMM, TFLOP/s) and device copy bandwidth (1 GiB, GB/s counting
    bytes read plus written): the ceilings every model-FLOP and bandwidth fraction is quoted against."""
    flush = l2_flush_buffer() if flush is None else flush
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    gemm_ms = cuda_time_ms(torch.matmul, a, b, flush=flush)
    del a, b
    src = torch.empty(2**29, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = cuda_time_ms(dst.copy_, src, flush=flush)
    return {"matmul_tflops": 2 * n**3 / gemm_ms / 1e9, "copy_gbps": 2 * src.numel() * 2 / copy_ms / 1e6}


def measure_cpu_matmul(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """This CPU's matmul rate in `dtype` (GFLOP/s, median of `repeats` n^3 GEMMs into a warm output), with
    torch's current thread count: the ceiling a CPU forward's model-FLOP rate is quoted against."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: oneDNN's first call picks and JITs its kernel
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        samples.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(samples)) / 1e9


def executed_flops(config: ModelConfig, groups: Sequence[tuple[int, Sequence[int]]]) -> float:
    """FLOPs qrerank's forward actually runs for `groups` of (shared prefix length P, member lengths): the
    prefix once, each member's own L - P tokens attending to the prefix and causally to themselves, and
    past the last attention only each member's final token (o_proj and MLP on [B] rows). The fraction of a
    matmul rate quoted on this is the hardware's, with no credit for work skipped."""
    h, d = config.hidden_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    qkv, rest = h * (q + 2 * kv), q * h + 3 * h * config.intermediate_size  # weights per layer
    tokens = pairs = outputs = 0.0
    for prefix, lengths in groups:
        own = [n - prefix for n in lengths]
        tokens += prefix + sum(own)
        pairs += prefix * (prefix + 1) / 2 + sum(n * prefix + n * (n + 1) / 2 for n in own)
        outputs += len(lengths)
    layers = config.num_hidden_layers
    linear = layers * qkv * tokens + ((layers - 1) * tokens + outputs) * rest
    return 2 * linear + layers * 2 * 2 * pairs * q


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
