"""Fused CPU ops: the twins of reference.py compiled by Inductor into vectorised C++ loops that write into the
engine's Workspace, so the elementwise work between the GEMMs costs about what its memory traffic costs.

The twins, written op by op for clarity, make six to twelve passes over each activation with fp32 round
trips: in a bf16 forward they cost as much as the GEMMs. Each function below computes its twin's
expression verbatim and copies the result into a buffer; Inductor fuses that into one or two loops over
the rows with the fp32 intermediates in registers. Numerics are the twin's except that intermediate
roundings to bf16 inside one op are skipped (the result is rounded once), which tests bound per dtype.

Compiling needs a C++ compiler at run time and takes seconds, so `FusedCpuOps.warm_up` compiles while the
engine is built, for T >= 2 rows (T symbolic: one kernel for every batch) and T = 1 (torch specialises
size-1 dimensions), never during a request. torch also compiles per thread count (its guards check
`torch.get_num_threads()`): after `torch.set_num_threads`, `Engine.warmup()` compiles for the new count,
else the engine's next run does (and logs a warning). Without a working compiler the twins run instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import torch

from qrerank import reference
from qrerank.batching import PackedBatch, Part, pack
from qrerank.cpu_attention import AttentionPlan, attention_into, row_max_into, shifted_softmax_into
from qrerank.ops import Ops
from qrerank.workspace import Workspace


def _rms_norm_into(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor) -> None:
    out.copy_(reference.rms_norm(x, weight, eps))


def _add_rms_norm_into(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor, summed: torch.Tensor
) -> None:
    normed, total = reference.add_rms_norm(x, residual, weight, eps)
    out.copy_(normed)
    summed.copy_(total)


def _qk_norm_rope_into(
    qkv: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    rope: torch.Tensor,
    positions: torch.Tensor,
    num_q_heads: int,
    num_kv_heads: int,
    eps: float,
    q_out: torch.Tensor,
    k_out: torch.Tensor,
) -> None:
    q, k, _ = reference.qk_norm_rope(qkv, q_weight, k_weight, rope, positions, num_q_heads, num_kv_heads, eps)
    q_out.copy_(q)
    k_out.copy_(k)


def _silu_mul_into(gate_up: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(reference.silu_mul(gate_up))


@dataclass(frozen=True)
class Kernels:
    """The `*_into` functions, compiled or (the fallback) run eagerly: four here, two of bf16 attention."""

    rms_norm: Callable[..., None]
    add_rms_norm: Callable[..., None]
    qk_norm_rope: Callable[..., None]
    silu_mul: Callable[..., None]
    row_max: Callable[..., None]
    shifted_softmax: Callable[..., None]

    @classmethod
    def eager(cls) -> Kernels:
        return cls(
            _rms_norm_into,
            _add_rms_norm_into,
            _qk_norm_rope_into,
            _silu_mul_into,
            row_max_into,
            shifted_softmax_into,
        )

    @classmethod
    def compiled(cls) -> Kernels:
        """Inductor wrappers, compiled on first call. Made per engine so that importing qrerank never loads
        torch._dynamo; torch caches compiled code per function, so engines of one shape share it."""
        eager = cls.eager()
        # dynamic=False: every size is static but the dimensions `_rows` (and cpu_attention) mark, so that hidden and
        # head sizes are compile-time constants of the vector loops. Not fullgraph: should a request ever
        # need a variant beyond torch's recompile limit, it runs eagerly rather than failing.
        compile_ = partial(torch.compile, dynamic=False)
        return cls(**{f.name: compile_(getattr(eager, f.name)) for f in fields(cls)})


def _rows(*tensors: torch.Tensor) -> None:
    """Mark dimension 0 (tokens or sequences) dynamic: one compiled kernel serves every batch of >= 2 rows."""
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)


def warm_up_batches(device: torch.device, max_length: int, gemm_min_keys: int | None) -> list[PackedBatch]:
    """Tiny batches that reach every kernel at every shape class it will meet: >= 2 rows and 1 row
    (the last layer runs on one row per output), with and without a shared prefix; and where the attention
    has a GEMM form that a sequence of max_length can reach, blocks of 1 and 2 queries after that many keys."""
    sequences = [[0, 0, 1], [0, 0, 1, 2], [0]]
    batches = [
        pack(sequences, [Part(np.array([0, 1]), 2)], device),  # 5 tokens, 2 outputs, a shared prefix
        pack(sequences, [Part(np.array([2]), 0)], device),  # 1 token
    ]
    if gemm_min_keys is not None and gemm_min_keys + 2 <= max_length:
        prefix = [0] * gemm_min_keys
        batches.append(pack([[*prefix, 1], [*prefix, 1, 2]], [Part(np.array([0, 1]), gemm_min_keys)], device))
    return batches


class FusedCpuOps:
    """The Ops of one CPU engine. Every output is a view of a Workspace buffer, named by value lifetime:

    - "normed": the output of a norm, read by the next linear layer only;
    - "residual.0"/"residual.1": the residual stream; add_rms_norm writes the one its input is not in;
    - "linear": every linear layer's output; a linear's output is dead before the next linear runs
      (v, a view of qkv, is read by attention, which ends before o_proj starts);
    - "q"/"k", "attention", "act": q/k after norm and RoPE, the attention output, silu(gate) * up.
    So a forward allocates nothing proportional to its tokens but the embedding lookup.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device, attention_plan: AttentionPlan) -> None:
        self.workspace = Workspace(dtype, device)
        self.attention_plan = attention_plan
        self.kernels = Kernels.compiled()
        self.compile_error: str | None = None  # why the eager kernels run instead, if they do
        self.compiled_for: set[int] = set()  # torch thread counts the kernels are compiled for (torch guards on it)

    def ops(self) -> Ops:
        return Ops(
            name="cpu",
            rms_norm=self.rms_norm,
            add_rms_norm=self.add_rms_norm,
            qk_norm_rope=self.qk_norm_rope,
            attention=self.attention,
            silu_mul=self.silu_mul,
            linear=self.linear,
        )

    def warm_up(self, forward: Callable[[PackedBatch], torch.Tensor], device: torch.device, max_length: int) -> None:
        """Compile every kernel now, through `forward` (the model's) on tiny batches of at most max_length tokens.
        Without a working C++ compiler (or where torch cannot compile at all) the eager kernels take over, and
        the reason is kept."""
        self.compiled_for.add(torch.get_num_threads())
        try:
            # Each model shape and dtype adds two variants (>= 2 rows, 1 row) to every kernel; torch's
            # default limit of 8 per function would cap a process at four such engines.
            with torch._dynamo.config.patch(recompile_limit=64):
                for batch in warm_up_batches(device, max_length, self.attention_plan.gemm_min_keys):
                    forward(batch)
        except torch._dynamo.exc.TorchDynamoException as error:
            self.kernels = Kernels.eager()
            self.compile_error = str(error).strip().splitlines()[0]

    def describe(self) -> str:
        if self.compile_error is None:
            return "fused CPU ops (Inductor-compiled)"
        return f"CPU ops with eager kernels (compiling failed: {self.compile_error})"

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        out = self.workspace.take("normed", x.shape)
        _rows(x, out)
        self.kernels.rms_norm(x, weight, eps, out)
        return out

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.workspace.take("normed", x.shape)
        summed = self.workspace.take("residual.0", x.shape)
        if summed.data_ptr() == residual.data_ptr():  # never write the sum over its own input
            summed = self.workspace.take("residual.1", x.shape)
        _rows(x, residual, out, summed)
        self.kernels.add_rms_norm(x, residual, weight, eps, out, summed)
        return out, summed

    def qk_norm_rope(
        self,
        qkv: torch.Tensor,
        q_weight: torch.Tensor,
        k_weight: torch.Tensor,
        rope: torch.Tensor,
        positions: torch.Tensor,
        num_q_heads: int,
        num_kv_heads: int,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t, head_dim = qkv.shape[0], q_weight.shape[0]
        q = self.workspace.take("q", (t, num_q_heads, head_dim))
        k = self.workspace.take("k", (t, num_kv_heads, head_dim))
        _rows(qkv, positions, q, k, rope)  # rope's rows: max_length, which differs between engines
        self.kernels.qk_norm_rope(qkv, q_weight, k_weight, rope, positions, num_q_heads, num_kv_heads, eps, q, k)
        v = qkv[:, (num_q_heads + num_kv_heads) * head_dim :].view(t, num_kv_heads, head_dim)
        return q, k, v

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        scale: float,
        prefix_offsets: torch.Tensor | None = None,
        prefix_lens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.workspace.take("attention", q.shape)
        plan, kernels = self.attention_plan, self.kernels
        args = (prefix_offsets, prefix_lens, plan, self.workspace, kernels.row_max, kernels.shifted_softmax)
        return attention_into(out, q, k, v, cu_seqlens, scale, *args)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        out = self.workspace.take("act", (gate_up.shape[0], gate_up.shape[1] // 2))
        _rows(gate_up, out)
        self.kernels.silu_mul(gate_up, out)
        return out

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x [N, in] @ weight[out, in]^T -> [N, out], into the "linear" buffer (torch.mm takes `out=`)."""
        return torch.mm(x, weight.t(), out=self.workspace.take("linear", (x.shape[0], weight.shape[0])))
