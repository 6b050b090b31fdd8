"""Engine: a loaded checkpoint on one device, turning groups of token sequences into last-token hidden states."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from qrerank import cpu_features
from qrerank.batching import Part, batch_size, pack, plan_batches, shared_prefix_len, split_parts
from qrerank.checkpoint import Checkpoint, load_weights
from qrerank.config import ModelConfig
from qrerank.cpu_attention import plan_for
from qrerank.cpu_features import CpuFeatures
from qrerank.cpu_ops import FusedCpuOps
from qrerank.cuda_graphs import CudaGraphs
from qrerank.model import Qwen3
from qrerank.ops import ops_for
from qrerank.requests import Tokenized
from qrerank.validation import check_bool, check_int, resolve_backend, resolve_device, resolve_dtype

DEFAULT_MAX_LENGTH = 8192  # max_length=None: this, or the model's max_position_embeddings when shorter
DEFAULT_MAX_BATCH_TOKENS = 16384
logger = logging.getLogger("qrerank")
PIPELINE_CHUNK = 1024  # sequences tokenized per step of Engine.run_pipelined


def chunk_groups(sizes: Sequence[int], chunk: int = PIPELINE_CHUNK) -> list[list[tuple[int, int, int]]]:
    """Cut groups of `sizes` items into chunks of at most `chunk` items, in order: (group, start, end) slices.

    Empty groups produce no slice.
    """
    chunks: list[list[tuple[int, int, int]]] = [[]]
    room = chunk
    for group, size in enumerate(sizes):
        start = 0
        while start < size:
            if room == 0:
                chunks.append([])
                room = chunk
            end = min(size, start + room)
            chunks[-1].append((group, start, end))
            room -= end - start
            start = end
    return chunks if chunks[0] else []


@dataclass(frozen=True)
class EngineOptions:
    """The constructor arguments shared by Reranker and Embedder, validated before any file is read."""

    device: torch.device
    dtype: torch.dtype
    requested_dtype: str | torch.dtype | None  # as given: "auto" is reported with what it chose
    cpu: CpuFeatures | None  # detected once, on CPU devices
    max_length: int | None  # None until `fit` sets the model-derived default
    max_batch_tokens: int
    backend: str  # "triton": qrerank.kernels; "cpu": the fused CPU ops; "torch": the reference twins (debugging)
    share_prefix: bool  # compute a group's common token prefix once per micro-batch
    cuda_graphs: bool  # replay small micro-batches from captured CUDA graphs
    warmup: bool  # compile every kernel and capture every graph at construction, not on the first requests

    @classmethod
    def validate(
        cls,
        device: str | torch.device | None,
        dtype: str | torch.dtype | None,
        max_length: int | None,
        max_batch_tokens: int,
        backend: str | None = None,
        share_prefix: bool = True,
        cuda_graphs: bool | None = None,
        warmup: bool | None = None,
    ) -> EngineOptions:
        resolved = resolve_device(device)
        cpu = cpu_features.detect() if resolved.type == "cpu" else None
        resolved_dtype = resolve_dtype(dtype, resolved, cpu)
        backend = resolve_backend(backend, resolved, resolved_dtype)
        graphs_possible = resolved.type == "cuda" and backend == "triton"  # the torch attention syncs the host
        if cuda_graphs is None:
            cuda_graphs = graphs_possible
        elif check_bool(cuda_graphs, "cuda_graphs") and not graphs_possible:
            raise ValueError(
                f"cuda_graphs=True needs a CUDA device and backend='triton', got device={str(resolved)!r} "
                f"and backend={backend!r}"
            )
        return cls(
            device=resolved,
            dtype=resolved_dtype,
            requested_dtype=dtype,
            cpu=cpu,
            max_length=None if max_length is None else check_int(max_length, "max_length", 1),
            max_batch_tokens=check_int(max_batch_tokens, "max_batch_tokens", 1),
            backend=backend,
            share_prefix=check_bool(share_prefix, "share_prefix"),
            cuda_graphs=cuda_graphs,
            warmup=resolved.type == "cuda" if warmup is None else check_bool(warmup, "warmup"),
        )

    def fit(self, config: ModelConfig) -> EngineOptions:
        """These options for a model of `config`: max_length None becomes min(DEFAULT_MAX_LENGTH, the model's
        max_position_embeddings); a given max_length past the model's context is a ValueError."""
        context = config.max_position_embeddings
        if self.max_length is None:
            return replace(self, max_length=min(DEFAULT_MAX_LENGTH, context))
        if self.max_length > context:
            raise ValueError(f"max_length={self.max_length} exceeds the model's max_position_embeddings ({context})")
        return self


class Engine:
    """The model plus the batching around it. `run` may be called from several threads: one runs at a time."""

    def __init__(self, ckpt: Checkpoint, options: EngineOptions, head_token_ids: Sequence[int] | None = None) -> None:
        options = options.fit(ckpt.config)
        self.options = options
        self.config = ckpt.config
        self.path = ckpt.path
        weights = load_weights(ckpt, options.device, options.dtype, head_token_ids)
        self.cpu_ops = None
        if options.backend == "cpu":
            plan = plan_for(options.dtype, amx=options.cpu is not None and options.cpu.amx_bf16)
            self.cpu_ops = FusedCpuOps(options.dtype, options.device, plan)
        ops = self.cpu_ops.ops() if self.cpu_ops is not None else ops_for(options.backend)
        self.model = Qwen3(ckpt.config, weights, ops, max_positions=options.max_length)
        if self.cpu_ops is not None:
            self.cpu_ops.warm_up(self.model.forward, options.device, options.max_length)  # now, not in a request
        self._graphs = CudaGraphs(self.model) if options.cuda_graphs else None
        self._lock = threading.Lock()
        if options.warmup:
            self.warmup()

    def describe(self) -> str:
        """Where and how this engine runs, for repr(): e.g. "device=cpu, dtype=bfloat16 (auto), backend=cpu, ..."."""
        o = self.options
        dtype = str(o.dtype).removeprefix("torch.") + (" (auto)" if o.requested_dtype in (None, "auto") else "")
        parts = [f"{str(self.path)!r}", f"device={o.device}", f"dtype={dtype}", f"backend={o.backend}"]
        if o.cpu is not None:
            parts.append(f"cpu={o.cpu.describe()!r}")
        if self.cpu_ops is not None:
            parts.append(f"ops={self.cpu_ops.describe()!r}")
        return ", ".join(parts)

    @property
    def head_rows(self) -> torch.Tensor:
        rows = self.model.weights.head_rows
        assert rows is not None, "engine was loaded without LM-head rows"
        return rows

    def run(self, groups: Sequence[Sequence[Sequence[int]]], progress: tqdm | None = None) -> torch.Tensor:
        """Final-normed last-token states [N, H] (fp32, on the engine's device) of every sequence, groups flattened.

        A group's sequences (one query's documents, one request's texts) may share a token prefix,
        which is then computed once per micro-batch. Nothing here waits for the device: the caller's
        first read of the result does.
        """
        options = self.options
        sequences = [seq for group in groups for seq in group]
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        members = np.split(np.arange(len(sequences)), np.cumsum([len(group) for group in groups])[:-1])
        prefixes = [shared_prefix_len(group) if options.share_prefix else 0 for group in groups]
        out = torch.empty((len(sequences), self.config.hidden_size), dtype=torch.float32, device=options.device)
        with self._lock:
            if self.cpu_ops is not None and torch.get_num_threads() not in self.cpu_ops.compiled_for:
                self._recompile_cpu_ops()
            for parts in plan_batches(lengths, members, prefixes, options.max_batch_tokens):
                self._run_parts(sequences, lengths, parts, out)
                if progress is not None:
                    progress.update(sum(len(part.members) for part in parts))
        return out

    def warmup(self) -> None:
        """Do now what the first requests would otherwise wait for: compile every kernel variant (one eager
        batch with a shared prefix and one without) and capture every CUDA-graph bucket this engine's
        max_batch_tokens and max_length can reach. On CUDA with the default options it runs at construction.
        On CPU the fused ops compile at construction anyway; call this after `torch.set_num_threads`, for
        which torch compiles them again."""
        options = self.options
        assert options.max_length is not None  # set by fit()
        eager = [([[0], [1]], 0)]  # two sequences sharing nothing
        if options.max_length >= 2:  # a shared prefix leaves each sequence a token of its own
            eager.append(([[0, 1], [0, 2]], 1))
        with self._lock:
            if self.cpu_ops is not None:
                self.cpu_ops.warm_up(self.model.forward, options.device, options.max_length)
            for sequences, prefix in eager:
                self.model.forward(pack(sequences, [Part(np.arange(2), prefix)], options.device))
            if self._graphs is not None:
                for bucket in self._graphs.buckets(options.max_batch_tokens, options.max_length):
                    self._graphs.capture(bucket)

    def _recompile_cpu_ops(self) -> None:
        """torch compiles for the thread count it runs with: after `torch.set_num_threads` the fused ops
        compile again, once per count. Done here, at the start of a run, rather than inside its forward."""
        assert self.cpu_ops is not None
        logger.warning(
            "torch's thread count is now %d; this engine's CPU ops were compiled for %s: compiling them for it now, "
            "in a request (seconds); call engine.warmup() after torch.set_num_threads to do it beforehand",
            torch.get_num_threads(),
            sorted(self.cpu_ops.compiled_for),
        )
        self.cpu_ops.warm_up(self.model.forward, self.options.device, self.options.max_length)

    def check_tokenized(self, tokenized: Sequence[Tokenized], sizes: Sequence[int]) -> None:
        """Token ids supplied by a caller (one Tokenized per request) must fit the requests and the model:
        a wrong id would index outside the embedding table, which on a GPU is a device-side crash, not an error."""
        if len(tokenized) != len(sizes):
            raise ValueError(f"tokenized has {len(tokenized)} entries for {len(sizes)} requests")
        vocab, limit = self.config.vocab_size, self.options.max_length
        for i, (request, size) in enumerate(zip(tokenized, sizes)):
            if not isinstance(request, Tokenized):
                raise TypeError(f"tokenized[{i}] must be a Tokenized, got {type(request).__name__}")
            if request.items != size:
                raise ValueError(f"tokenized[{i}] has {request.items} items for the request's {size} inputs")
            for j, seq in enumerate(request.ids):
                if not 1 <= len(seq) <= limit:
                    raise ValueError(f"tokenized[{i}].ids[{j}] has {len(seq)} tokens; expected 1 to max_length={limit}")
                if min(seq) < 0 or max(seq) >= vocab:
                    raise ValueError(f"tokenized[{i}].ids[{j}] holds ids outside the vocabulary [0, {vocab})")

    def run_requests(
        self,
        sizes: Sequence[int],
        encode: Callable[[int, int, int], list[list[int]]],
        tokenized: Sequence[Tokenized] | None = None,
        progress: tqdm | None = None,
    ) -> torch.Tensor:
        """States [S, H] of requests of `sizes` items, each request one group.

        `encode(request, start, end)` tokenizes items start:end of a request (one sequence each); it runs
        in pipelined chunks. `tokenized` (one per request, from a caller that tokenized already, possibly
        several sequences per item) is checked and used instead.
        """
        if tokenized is not None:
            self.check_tokenized(tokenized, sizes)
            return self.run([request.ids for request in tokenized], progress)

        def encode_chunk(chunk: list[tuple[int, int, int]]) -> list[list[list[int]]]:
            return [encode(request, start, end) for request, start, end in chunk]

        return self.run_pipelined([partial(encode_chunk, chunk) for chunk in chunk_groups(sizes)], progress)

    def run_pipelined(
        self, chunks: Sequence[Callable[[], list[list[list[int]]]]], progress: tqdm | None = None
    ) -> torch.Tensor:
        """`run` over the groups each chunk tokenizes, concatenated. Chunk i+1 is tokenized on a worker
        thread (the tokenizer releases the GIL) while the device works on chunk i."""
        outputs = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(chunks[0]) if chunks else None
            for i in range(len(chunks)):
                assert pending is not None
                groups = pending.result()
                pending = pool.submit(chunks[i + 1]) if i + 1 < len(chunks) else None
                outputs.append(self.run(groups, progress))
        if not outputs:
            return torch.empty((0, self.config.hidden_size), dtype=torch.float32, device=self.options.device)
        return torch.cat(outputs)

    def _run_parts(
        self, sequences: Sequence[Sequence[int]], lengths: np.ndarray, parts: list[Part], out: torch.Tensor
    ) -> None:
        tokens, seqs = batch_size(parts, lengths)
        pad_to = self._graphs.bucket(tokens, seqs) if self._graphs is not None else None
        try:
            batch = pack(sequences, parts, self.options.device, pad_to)
            hidden = self._graphs(batch) if self._graphs is not None and pad_to else self.model.forward(batch)
        except torch.OutOfMemoryError as error:
            if sum(len(part.members) for part in parts) == 1:
                raise torch.OutOfMemoryError(
                    f"a single sequence of {tokens} tokens does not fit in device memory; lower max_length"
                ) from error
            # The batch does not fit: free what the attempt cached and run it as two halves instead.
            torch.cuda.empty_cache()
            for half in split_parts(parts):
                self._run_parts(sequences, lengths, half, out)
            return
        out.index_copy_(0, batch.rows, hidden[: len(batch.indices)].float())
