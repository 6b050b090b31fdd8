"""SwiGLU activation on the fused gate/up projection: silu(gate) * up, gate half first.

Twin of reference.silu_mul. A 2-D grid of (row, column block) programs: the intermediate sizes of the
Qwen3 models (3072 to 12288) are too wide for one row per program without register spills, and a fixed
BLOCK keeps a single compiled configuration per dtype. fp32 math; silu(gate) is rounded to the
activation dtype before the product, as torch's `F.silu(gate) * up` rounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qrerank.kernels.aot import AotSpec, pointer_type

AOT_DTYPES = (torch.bfloat16, torch.float16)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_BLOCK = 1024  # 8 elements (16 bytes of bf16) per thread at 4 warps
_NUM_WARPS = 4


@triton.jit
def _silu_mul_kernel(gate_up_ptr, gate_up_stride, out_ptr, inter, BLOCK: tl.constexpr):
    # gate_up [T, 2 I] with row stride gate_up_stride; out [T, I] contiguous
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(gate_up_ptr + row * gate_up_stride + cols, mask=mask, other=0.0)
    up = tl.load(gate_up_ptr + row * gate_up_stride + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)  # exp overflow -> inf -> silu = -0, as torch
    tl.store(out_ptr + row * inter + cols, (silu * up.to(tl.float32)).to(gate.dtype), mask=mask)


def launch_config() -> dict[str, int]:
    """Constexprs and launch options (shared by the launcher and aot_configs): one for every shape."""
    return {"BLOCK": _BLOCK, "num_warps": _NUM_WARPS, "num_stages": 1}


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (rows may be strided, last dim contiguous) -> silu(gate) * up [T, I], as reference.silu_mul."""
    if not isinstance(gate_up, torch.Tensor):
        raise TypeError(f"gate_up must be a torch.Tensor, got {type(gate_up).__name__}")
    if gate_up.dim() != 2 or gate_up.shape[1] == 0 or gate_up.shape[1] % 2:
        raise ValueError(f"gate_up must be [T, 2I] with 2I even and > 0, got shape {tuple(gate_up.shape)}")
    if gate_up.dtype not in DTYPES:
        raise ValueError(f"gate_up has dtype {gate_up.dtype}; the kernel supports {DTYPES}")
    if gate_up.stride(1) != 1:
        raise ValueError(f"gate_up must be contiguous in its last dimension, got strides {gate_up.stride()}")
    tokens, inter = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((tokens, inter), dtype=gate_up.dtype, device=gate_up.device)
    if tokens > 0:
        config = launch_config()
        grid = (tokens, triton.cdiv(inter, config["BLOCK"]))
        _silu_mul_kernel[grid](gate_up, gate_up.stride(0), out, inter, **config)
    return out


def aot_configs() -> list[AotSpec]:
    """The launcher's single configuration, in bf16 and fp16 (the same for every intermediate size)."""
    config = launch_config()
    return [
        AotSpec(
            name=f"silu_mul[BLOCK={config['BLOCK']},{pointer_type(dtype)[1:]}]",
            kernel=_silu_mul_kernel,
            signature={
                "gate_up_ptr": pointer_type(dtype),
                "gate_up_stride": "i32",
                "out_ptr": pointer_type(dtype),
                "inter": "i32",
                "BLOCK": "constexpr",
            },
            constexprs={"BLOCK": config["BLOCK"]},
            num_warps=config["num_warps"],
            num_stages=config["num_stages"],
        )
        for dtype in AOT_DTYPES
    ]
