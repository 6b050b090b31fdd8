"""CUDA graphs for small micro-batches: the latency path, where kernel launches would cost more than the work.

A forward pass over a packed batch is captured once per shape bucket (total tokens rounded up to a
multiple of TOKEN_STEP, packed sequences to a power of two) and replayed after copying the padded
batch into the graph's static input buffers. Nothing in the captured forward reads a device value on
the host (the Triton attention kernel finds each sequence on the device), so replaying with other
lengths is exact. Larger batches run eagerly: there the launches hide behind the GEMMs anyway.

Capture runs under the engine's lock (one forward at a time) in thread-local capture mode: other threads
may keep allocating, copying results to the host or running another engine while a graph is captured.
In CUDA's default (global) mode any such call from another thread would invalidate the capture.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from qrerank.batching import PackedBatch, Part, pack
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
    """Captured forward passes of one model, keyed by padded (tokens, sequences). Not thread-safe: the
    engine's lock serialises every call."""

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

    def buckets(self, max_batch_tokens: int, max_length: int) -> list[tuple[int, int]]:
        """Every bucket a micro-batch of an engine with these limits can replay at.

        A planned micro-batch holds at most max_batch_tokens tokens in packed sequences of 1 to max_length
        tokens each, or is one input of at most max_length tokens that runs alone, as a prefix and the rest.
        """
        found = set()
        for cap, max_seqs in ((max_batch_tokens, max_batch_tokens), (max_length, 2)):
            cap = min(cap, self.max_tokens)
            for padded in range(TOKEN_STEP, cap + TOKEN_STEP, TOKEN_STEP):
                tokens = range(padded - TOKEN_STEP + 1, min(padded, cap) + 1)
                fewest = min(self._seq_bucket(t, min(-(-t // max_length), max_seqs)) for t in tokens)
                most = self._seq_bucket(tokens[-1], min(tokens[-1], max_seqs))
                found.update((padded, 1 << k) for k in range(fewest.bit_length() - 1, most.bit_length()))
        return sorted(found)

    def _seq_bucket(self, tokens: int, seqs: int) -> int:
        bucket = self.bucket(tokens, seqs)
        assert bucket is not None
        return bucket[1]

    def capture(self, bucket: tuple[int, int]) -> None:
        """Capture the forward pass of `bucket` now unless it is captured. A graph does not depend on the
        values in its buffers, so one 1-token sequence padded to the bucket stands for every batch of it."""
        if bucket not in self._graphs:
            self._capture(bucket, pack([[0]], [Part(np.zeros(1, dtype=np.int64), 0)], self.model.device, bucket))

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
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = self.model.forward(static)
        self._pool = graph.pool()
        self._graphs[key] = _Captured(graph, static, output)
        return self._graphs[key]
