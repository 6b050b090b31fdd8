"""CUDA graphs for small micro-batches: the latency path, where kernel launches would cost more than the work.

A forward pass over a packed batch is captured once per shape bucket (total tokens rounded up to a
multiple of TOKEN_STEP, packed sequences to a power of two) and replayed after copying the padded
batch into the graph's static input buffers. Nothing in the captured forward reads a device value on
the host (the Triton attention kernel finds each sequence on the device), so replaying with other
lengths is exact. Larger batches run eagerly: there the launches hide behind the GEMMs anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from qrerank.batching import PackedBatch
from qrerank.model import Qwen3

GRAPH_MAX_TOKENS = 2048  # above this a forward is long enough that launch latency does not matter
TOKEN_STEP = 128  # at most 127 padding tokens per replay
MIN_SEQS = 8
# The PackedBatch tensors a captured forward reads (rows/indices place the results, outside the graph).
# max_seqlen is a host int the Triton kernels do not size their grids by, so it needs no buffer.
_TENSOR_FIELDS = ("input_ids", "positions", "cu_seqlens", "prefix_offsets", "prefix_lens", "last_tokens")


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: PackedBatch  # static device buffers the graph reads
    output: torch.Tensor  # [seqs, H] static buffer the graph writes


class CudaGraphs:
    """Captured forward passes of one model, keyed by padded (tokens, sequences)."""

    def __init__(self, model: Qwen3, max_tokens: int = GRAPH_MAX_TOKENS) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self._graphs: dict[tuple[int, int], _Captured] = {}
        self._pool: tuple[int, int] | None = None  # one memory pool shared by every graph

    def bucket(self, tokens: int, seqs: int) -> tuple[int, int] | None:
        """The padded shape a batch replays at, or None when it runs eagerly."""
        if tokens > self.max_tokens:
            return None
        padded_tokens = -(-tokens // TOKEN_STEP) * TOKEN_STEP
        spare_seq = padded_tokens > tokens  # the padding tokens form a sequence of their own
        return padded_tokens, max(MIN_SEQS, 1 << (seqs + spare_seq - 1).bit_length())

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        """Final-normed states [padded seqs, H] of a batch packed with `pad_to=self.bucket(...)`; rows past
        the batch's outputs are padding. The result is the graph's buffer: read it before the next call."""
        key = (batch.input_ids.numel(), batch.cu_seqlens.numel() - 1)
        captured = self._graphs.get(key) or self._capture(key, batch)
        for field in _TENSOR_FIELDS:
            getattr(captured.inputs, field).copy_(getattr(batch, field), non_blocking=True)
        captured.graph.replay()
        return captured.output

    def _capture(self, key: tuple[int, int], batch: PackedBatch) -> _Captured:
        static = replace(batch, **{field: getattr(batch, field).clone() for field in _TENSOR_FIELDS})
        # A first run outside the graph compiles the Triton kernels and initialises cuBLAS workspaces,
        # neither of which may happen during capture.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.model.forward(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.model.forward(static)
        self._pool = graph.pool()
        self._graphs[key] = _Captured(graph, static, output)
        return self._graphs[key]
