"""Kernel benchmark on a CUDA GPU: qrerank's Triton kernels against torch and flash-attn, with the card's own limits.

python benchmarks/bench_kernels.py [--json PATH]

Measured in one process, bf16, on the same data for every provider:
- the card: bf16 matmul rate (8192^3 GEMM, TFLOP/s) and device copy bandwidth (1 GiB copy, GB/s
  counting bytes read + written);
- attention at Qwen3-0.6B heads (16 q, 8 kv, D=128), causal, on packed batches of equal-length
  sequences (32 x 512 and 8 x 2048 tokens) and with a 128-token shared prefix before 32 x 512. FLOPs
  convention: 4 * Hq * D * sum_i (L_i^2 / 2 + L_i * P_i) (QK^T and PV, half the square for causality,
  every own-query x prefix-key pair for a prefix of P_i), the same useful-FLOP count divides every
  provider's time. Baselines: torch SDPA as one batched [B, H, L, D] call (equal lengths: no padding;
  K/V heads repeated for GQA beforehand, outside the timing); with a prefix it runs each document with
  the prefix prepended (P + L tokens, causal), recomputing the prefix per document as a non-sharing
  engine does. flash_attn_varlen_func when importable: packed varlen, GQA native; with a prefix, each
  document's queries against [prefix; document] keys (causal aligned bottom-right), K/V built beforehand.
- rms_norm / add_rms_norm / qk_norm_rope / silu_mul at 0.6B shapes, T=16384: GB/s from the bytes the
  op must move (read + write; v of qk_norm_rope is a view and not counted), as a fraction of the
  measured copy bandwidth, and the speed-up over their torch references in reference.py.
Timing: CUDA events around one call, warm-up first, median of the repeats; L2 is flushed (a 256 MiB
write, outside the events) before every timed call.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from qrerank import reference
from qrerank.bench.roofline import cuda_time_ms, l2_flush_buffer, measure_card

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTER = 16, 8, 128, 1024, 3072  # Qwen3-0.6B
TOKENS = 16384
EPS = 1e-6
ATTENTION_CASES = (("32 x 512", 512, 32, 0), ("8 x 2048", 2048, 8, 0), ("prefix 128 + 32 x 512", 512, 32, 128))


def _attention_inputs(length: int, docs: int, prefix: int) -> dict[str, Any]:
    """Packed q/k/v [T, H, D] (a prefix, when any, packed once as sequence 0) and the varlen metadata."""
    lengths = ([prefix] if prefix else []) + [length] * docs
    tokens = sum(lengths)
    q = torch.randn(tokens, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(tokens, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    cu = F.pad(torch.tensor(lengths, device="cuda").cumsum(0), (1, 0)).to(torch.int32)
    inputs = {"q": q, "k": k, "v": v, "cu_seqlens": cu, "max_seqlen": max(lengths)}
    if prefix:
        inputs["prefix_offsets"] = torch.zeros(len(lengths), dtype=torch.int32, device="cuda")
        inputs["prefix_lens"] = torch.tensor([0] + [prefix] * docs, dtype=torch.int32, device="cuda")
    flops = 4 * HEADS * HEAD_DIM * (sum(n * n / 2 for n in lengths) + docs * length * prefix)
    return {"inputs": inputs, "flops": flops, "tokens": tokens}


def _sdpa_provider(inputs: dict[str, Any], length: int, docs: int, prefix: int) -> Callable[[], torch.Tensor]:
    """One batched SDPA call over [docs, Hq, prefix + length, D]; GQA K/V heads repeated beforehand."""

    def batched(x: torch.Tensor, repeat: int) -> torch.Tensor:  # packed [T, H, D] -> [B, H * repeat, P + L, D]
        own = x[prefix:].unflatten(0, (docs, length))  # [B, L, H, D]
        if prefix:
            own = torch.cat([x[:prefix].expand(docs, -1, -1, -1), own], dim=1)  # [B, P + L, H, D]
        return own.repeat_interleave(repeat, dim=2).transpose(1, 2).contiguous()

    group = HEADS // KV_HEADS
    q, k, v = batched(inputs["q"], 1), batched(inputs["k"], group), batched(inputs["v"], group)
    scale = HEAD_DIM**-0.5
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def _flash_provider(inputs: dict[str, Any], length: int, docs: int, prefix: int) -> Callable[[], torch.Tensor] | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    q, k, v, cu = inputs["q"], inputs["k"], inputs["v"], inputs["cu_seqlens"]
    scale = HEAD_DIM**-0.5
    if not prefix:
        return lambda: flash_attn_varlen_func(q, k, v, cu, cu, length, length, softmax_scale=scale, causal=True)
    # queries: the prefix (own sequence), then each document; keys: the prefix, then [prefix; document] each
    k_full, v_full = (
        torch.cat([x[:prefix]] + [torch.cat([x[:prefix], x[s : s + length]]) for s in cu[1:-1].tolist()])
        for x in (k, v)
    )
    cu_k = torch.tensor([0, prefix] + [prefix + (i + 1) * (prefix + length) for i in range(docs)], device="cuda")
    cu_k = cu_k.to(torch.int32)
    max_k = prefix + length
    return lambda: flash_attn_varlen_func(
        q, k_full, v_full, cu, cu_k, max(prefix, length), max_k, softmax_scale=scale, causal=True
    )


def measure_attention(flush: torch.Tensor) -> list[dict[str, Any]]:
    from qrerank.kernels.attention import attention

    rows = []
    for name, length, docs, prefix in ATTENTION_CASES:
        case = _attention_inputs(length, docs, prefix)
        inputs = case["inputs"]
        scale = HEAD_DIM**-0.5
        ours = attention(**inputs, scale=scale)
        expected = reference.attention(**inputs, scale=scale)
        providers = {"qrerank": functools.partial(attention, **inputs, scale=scale)}
        providers["torch sdpa"] = _sdpa_provider(inputs, length, docs, prefix)
        flash = _flash_provider(inputs, length, docs, prefix)
        if flash is not None:
            providers["flash-attn"] = flash
        times = {provider: cuda_time_ms(fn, flush=flush) for provider, fn in providers.items()}
        for provider, ms in times.items():
            rows.append(
                {
                    "case": name,
                    "tokens": case["tokens"],
                    "provider": provider,
                    "ms": ms,
                    "tflops": case["flops"] / ms / 1e9,
                    "qrerank_speedup": ms / times["qrerank"],
                    "max_abs_diff_vs_reference": (ours.float() - expected.float()).abs().max().item()
                    if provider == "qrerank"
                    else None,
                }
            )
    return rows


def _norm_cases() -> list[tuple[str, Callable[..., Any], Callable[..., Any], tuple[Any, ...], int]]:
    """(op, kernel, torch reference, args, bytes read + written) at 0.6B shapes, T=16384, bf16."""
    from qrerank.kernels.qk_norm_rope import qk_norm_rope
    from qrerank.kernels.rms_norm import add_rms_norm, rms_norm
    from qrerank.kernels.silu_mul import silu_mul

    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    x, residual = torch.randn(TOKENS, HIDDEN, **bf16), torch.randn(TOKENS, HIDDEN, **bf16)
    weight = torch.randn(HIDDEN, **bf16)
    qkv = torch.randn(TOKENS, (HEADS + 2 * KV_HEADS) * HEAD_DIM, **bf16)
    q_w, k_w = torch.randn(HEAD_DIM, **bf16), torch.randn(HEAD_DIM, **bf16)
    rope = reference.rope_cache(HEAD_DIM, 1e6, 8192, torch.device("cuda"))
    positions = torch.randint(0, 8192, (TOKENS,), device="cuda")
    gate_up = torch.randn(TOKENS, 2 * INTER, **bf16)
    qk_elements = TOKENS * (HEADS + KV_HEADS) * HEAD_DIM
    return [
        ("rms_norm", rms_norm, reference.rms_norm, (x, weight, EPS), 2 * x.numel() * 2),
        ("add_rms_norm", add_rms_norm, reference.add_rms_norm, (x, residual, weight, EPS), 4 * x.numel() * 2),
        (
            "qk_norm_rope",
            qk_norm_rope,
            reference.qk_norm_rope,
            (qkv, q_w, k_w, rope, positions, HEADS, KV_HEADS, EPS),
            2 * qk_elements * 2 + TOKENS * (8 + HEAD_DIM * 4),  # q/k read + written, positions, cos/sin rows
        ),
        ("silu_mul", silu_mul, reference.silu_mul, (gate_up,), gate_up.numel() * 2 * 3 // 2),
    ]


def measure_norms(flush: torch.Tensor, copy_gbps: float) -> list[dict[str, Any]]:
    rows = []
    for op, kernel, twin, args, nbytes in _norm_cases():
        ours, theirs = kernel(*args), twin(*args)
        pairs = zip(ours, theirs) if isinstance(ours, tuple) else [(ours, theirs)]
        diff = max((a.float() - b.float()).abs().max().item() for a, b in pairs)
        ms, torch_ms = cuda_time_ms(kernel, *args, flush=flush), cuda_time_ms(twin, *args, flush=flush)
        gbps = nbytes / ms / 1e6
        rows.append(
            {
                "op": op,
                "bytes": nbytes,
                "ms": ms,
                "gbps": gbps,
                "fraction_of_copy": gbps / copy_gbps,
                "torch_ms": torch_ms,
                "speedup_vs_torch": torch_ms / ms,
                "max_abs_diff_vs_torch": diff,
            }
        )
    return rows


def run(json_path: str | None = None) -> dict[str, Any]:
    """Measure everything, print the tables, write them to json_path when given; returns the figures."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench_kernels.py needs a CUDA GPU: torch.cuda.is_available() is False")
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 would run the kernels in Triton's CPU interpreter: unset it")
    import triton

    torch.manual_seed(0)
    flush = l2_flush_buffer()
    card = measure_card(flush)
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "flash_attn_available": importlib.util.find_spec("flash_attn") is not None,
        "card": card,
        "attention": measure_attention(flush),
        "norms": measure_norms(flush, card["copy_gbps"]),
    }
    print(f"{results['device']}, torch {results['torch']}, triton {results['triton']}, bf16")
    print(f"bf16 matmul {card['matmul_tflops']:.0f} TFLOP/s, copy {card['copy_gbps']:.0f} GB/s (read + write)")
    if not results["flash_attn_available"]:
        print("flash-attn is not installed: no flash-attn rows")
    print(f"\n{'attention case':<24} {'provider':<12} {'ms':>8} {'TFLOP/s':>8} {'qrerank x':>10}")
    for r in results["attention"]:
        print(f"{r['case']:<24} {r['provider']:<12} {r['ms']:8.3f} {r['tflops']:8.1f} {r['qrerank_speedup']:10.2f}")
    print(f"\n{'op (T=16384)':<14} {'ms':>8} {'GB/s':>7} {'of copy':>8} {'torch ms':>9} {'speed-up':>9}")
    for r in results["norms"]:
        print(
            f"{r['op']:<14} {r['ms']:8.3f} {r['gbps']:7.0f} {r['fraction_of_copy']:8.2f} "
            f"{r['torch_ms']:9.3f} {r['speedup_vs_torch']:9.2f}"
        )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured")
    run(args.json)
