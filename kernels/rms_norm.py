"""RMSNorm and fused residual-add + RMSNorm: one row per program, the whole row held in registers.

Twins of reference.rms_norm / reference.add_rms_norm with the same roundings: statistics in fp32 with eps
in fp32, the normalised row rounded to the activation dtype before the weight multiply (as Qwen3RMSNorm),
and the residual sum rounded to the activation dtype before its statistics (the residual stream is
stored in the model dtype). Rows may be strided; the last dimension must be contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qrerank.kernels.aot import AotSpec, pointer_type

QWEN3_HIDDEN_SIZES = (1024, 2560, 4096)
AOT_DTYPES = (torch.bfloat16, torch.float16)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    x_stride,
    residual_ptr,
    residual_stride,
    weight_ptr,
    out_ptr,
    sum_ptr,
    hidden,
    eps,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    # out and sum are contiguous [N, hidden]; x and residual rows may be strided
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_stride + cols, mask=mask, other=0.0)
        # fp32 add of two activations then one rounding: what torch's `x + residual` gives
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + row * hidden + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / hidden + eps)  # masked lanes are 0: no effect on the sum
    normed = (xf * rstd).to(x.dtype).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * hidden + cols, (weight * normed).to(x.dtype), mask=mask)


def launch_config(hidden: int, has_residual: bool) -> dict[str, int | bool]:
    """Constexprs and launch options for rows of `hidden` elements (shared by the launcher and aot_configs).

    BLOCK covers the row; about 8 elements per thread (16 bytes of bf16: one vector load) up to 16 warps.
    """
    block = triton.next_power_of_2(hidden)
    return {"BLOCK": block, "HAS_RESIDUAL": has_residual, "num_warps": min(16, max(4, block // 256)), "num_stages": 1}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [N, H], weight [H] -> [N, H] in x's dtype: weight * (x * rsqrt(mean(x^2) + eps)), as reference.rms_norm."""
    _check(x, weight, eps)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.shape[0] > 0:
        # residual/sum pointers are unused without HAS_RESIDUAL; any valid tensor fills the slots
        _rms_norm_kernel[(x.shape[0],)](
            x, x.stride(0), x, x.stride(0), weight, out, out, x.shape[1], float(eps), **launch_config(x.shape[1], False)
        )
    return out


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [N, H], weight [H] -> (rms_norm(x + residual), x + residual), both new [N, H] tensors."""
    _check(x, weight, eps)
    _check_like(residual, "residual", x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.shape[0] > 0:
        _rms_norm_kernel[(x.shape[0],)](
            x, x.stride(0), residual, residual.stride(0), weight, out, summed, x.shape[1], float(eps),
            **launch_config(x.shape[1], True),
        )  # fmt: skip
    return out, summed


def aot_configs() -> list[AotSpec]:
    """Every configuration the launchers pick for the Qwen3 hidden sizes, in bf16 and fp16."""
    specs = {}
    for dtype in AOT_DTYPES:
        ptr = pointer_type(dtype)
        signature = {
            "x_ptr": ptr, "x_stride": "i32", "residual_ptr": ptr, "residual_stride": "i32", "weight_ptr": ptr,
            "out_ptr": ptr, "sum_ptr": ptr, "hidden": "i32", "eps": "fp32", "BLOCK": "constexpr",
            "HAS_RESIDUAL": "constexpr",
        }  # fmt: skip
        for hidden in QWEN3_HIDDEN_SIZES:
            for has_residual in (False, True):
                config = launch_config(hidden, has_residual)
                name = f"rms_norm[BLOCK={config['BLOCK']},{'add,' if has_residual else ''}{ptr[1:]}]"
                specs[name] = AotSpec(
                    name=name,
                    kernel=_rms_norm_kernel,
                    signature=signature,
                    constexprs={"BLOCK": config["BLOCK"], "HAS_RESIDUAL": has_residual},
                    num_warps=config["num_warps"],
                    num_stages=config["num_stages"],
                )  # hidden sizes with the same BLOCK share one compiled kernel: keyed by name
    return list(specs.values())


def _check(x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    _check_rows(x, "x")
    if x.dtype not in DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; the kernel supports {DTYPES}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.shape != (x.shape[1],) or weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(
            f"weight must be a [{x.shape[1]}] {x.dtype} tensor on {x.device} like x, got {_describe(weight)}"
        )
    if weight.stride(0) != 1 and weight.shape[0] > 1:
        raise ValueError(f"weight must be contiguous, got stride {weight.stride(0)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")


def _check_like(t: torch.Tensor, name: str, x: torch.Tensor) -> None:
    _check_rows(t, name)
    if t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
        raise ValueError(f"{name} must be a {tuple(x.shape)} {x.dtype} tensor on {x.device} like x, got {_describe(t)}")


def _check_rows(t: torch.Tensor, name: str) -> None:
    """A [N, H] tensor (H >= 1) whose rows may be strided but whose last dimension is contiguous."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2 or t.shape[1] == 0:
        raise ValueError(f"{name} must be [N, H] with H >= 1, got shape {tuple(t.shape)}")
    if t.stride(1) != 1 and t.shape[1] > 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {t.stride()}")


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}"
