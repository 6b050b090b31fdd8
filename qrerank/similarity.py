"""`qrerank.topk`: exact inner-product top-k of queries against a corpus, on the GPU without a score matrix.

For each query row q the result is the k corpus rows of highest score q . c, best first, equal scores in
ascending row order: exactly a stable sort by (-score, row). Scores are computed in fp32 whatever the input
dtype. On CUDA tensors this runs qrerank's fused kernel (csrc/, the extension `qrerank._topk`); everywhere
else, and on CUDA when the extension is not built, a torch path that multiplies in fp32 corpus chunks (so
memory stays bounded) and merges 64-bit keys (score bits, then ~row) with `torch.topk`. Keys are distinct,
so the merge has one right answer and torch.topk's unspecified tie order never matters.

"Same results" across the two paths: fp32 sums in a different order differ in the last bits, so scores
agree within rounding (about 1e-6 relative to sum |q_i c_i|) and rows agree exactly except where two
scores lie within that rounding of each other. Inputs whose products are exact in fp32 (small integers,
for example) give bit-identical scores and rows, ties included. -0.0 ranks as +0.0; a NaN score (only
from an fp32 overflow, inf - inf) ranks last. On CUDA the torch path follows torch's matmul precision
setting (TF32 when `torch.backends.cuda.matmul.allow_tf32` is on); the kernel always sums in full fp32.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Any

import numpy as np
import torch

from qrerank.validation import check_int

MAX_K = 1024
BACKENDS = ("cuda", "torch")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_NUMPY_DTYPES = (np.float32, np.float16)
_ALIGNMENT = 16  # bytes; the kernel's row starts (its 16-byte asynchronous copies)
_QUERY_CHUNK = 4096  # queries per launch / torch pass: bounds the kernel workspace and the torch path's memory
_CHUNK_ELEMENTS = 1 << 22  # scores per torch-path chunk (and elements per finiteness check): ~100 MB peak
_LOW_WORD = 1 << 32


def _load_extension() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module("qrerank._topk"), None
    except ModuleNotFoundError as error:
        if error.name != "qrerank._topk":
            raise
        return None, "qrerank._topk is not built (no CUDA toolkit at install time, or QRERANK_SKIP_CUDA_BUILD=1)"
    except ImportError as error:  # built, but broken: say why instead of silently using the torch path
        return None, f"qrerank._topk failed to import: {error}"


_EXTENSION, _EXTENSION_ERROR = _load_extension()


def kernel_available() -> bool:
    """Whether the CUDA kernel is built and importable (running it still needs CUDA tensors)."""
    return _EXTENSION is not None


def topk(queries: Any, corpus: Any, k: int, *, backend: str | None = None) -> tuple[Any, Any]:
    """Scores float32 [m, k'] and corpus row indices int64 [m, k'] of each query's k best rows, best first.

    `queries` [m, d] and `corpus` [n, d]: torch tensors or numpy arrays of one dtype (float32, bfloat16,
    float16) on one device, finite. k' = min(k, n): a k larger than the corpus is clamped, and an empty
    corpus gives empty results. Numpy inputs give numpy results; otherwise tensors on the inputs' device.
    `backend`: None (the CUDA kernel for CUDA tensors when built, else torch), "cuda" or "torch".
    Checking that the inputs are finite reads them once; `qrerank.Index` checks its corpus only when added.
    """
    as_numpy = isinstance(queries, np.ndarray) and isinstance(corpus, np.ndarray)
    queries, corpus = as_matrix(queries, "queries"), as_matrix(corpus, "corpus")
    check_pair(queries, corpus)
    k = check_int(k, "k", 1, MAX_K)
    backend = resolve_backend(backend, queries.device)
    check_finite(queries, "queries")
    check_finite(corpus, "corpus")
    scores, indices = run_topk(queries, corpus, k, backend)
    return (scores.numpy(), indices.numpy()) if as_numpy else (scores, indices)


def as_matrix(x: Any, name: str) -> torch.Tensor:
    """`x` as a 2-D torch tensor of a supported dtype (numpy arrays are wrapped on the CPU, not copied)."""
    if isinstance(x, np.ndarray):
        if x.dtype not in _NUMPY_DTYPES:
            raise ValueError(f"{name} dtype {x.dtype} is not supported; use float32 or float16 (or a torch bfloat16)")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _DTYPE_NAMES:
        raise ValueError(f"{name} dtype {x.dtype} is not supported; use torch.float32, bfloat16 or float16")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, dim], got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(x.shape)}")
    return x


def check_pair(queries: torch.Tensor, corpus: torch.Tensor) -> None:
    if queries.device != corpus.device:
        raise ValueError(
            f"queries and corpus must be on one device, got queries on {queries.device} and corpus on {corpus.device}"
        )
    if queries.dtype != corpus.dtype:
        raise ValueError(
            f"queries and corpus must have one dtype, got queries {queries.dtype} and corpus {corpus.dtype}"
        )
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"queries and corpus must have the same dimension, got queries {tuple(queries.shape)} "
            f"and corpus {tuple(corpus.shape)}"
        )


def check_finite(x: torch.Tensor, name: str) -> None:
    """ValueError if `x` holds a NaN or an infinity (checked in chunks: one device sync, bounded memory)."""
    rows = max(1, _CHUNK_ELEMENTS // x.shape[1])
    flags = [torch.isfinite(x[i : i + rows]).all() for i in range(0, x.shape[0], rows)]
    if flags and not bool(torch.stack(flags).all()):
        what = "NaN" if bool(torch.isnan(x).any()) else "an infinite value"
        raise ValueError(f"{name} contains {what}; similarity search needs finite vectors")


def resolve_backend(backend: str | None, device: torch.device) -> str:
    if backend is None:
        if device.type == "cuda" and _EXTENSION is None and _EXTENSION_ERROR and "failed" in _EXTENSION_ERROR:
            warnings.warn(f"{_EXTENSION_ERROR}; using the torch path", RuntimeWarning, stacklevel=3)
        return "cuda" if device.type == "cuda" and _EXTENSION is not None else "torch"
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "cuda" and _EXTENSION is None:
        raise ValueError(f"backend='cuda' is unavailable: {_EXTENSION_ERROR}")
    return backend


def run_topk(queries: torch.Tensor, corpus: torch.Tensor, k: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """topk() on inputs its checks have passed (as_matrix, check_pair, 1 <= k <= MAX_K, resolve_backend)."""
    k = min(k, corpus.shape[0])
    if queries.shape[0] == 0 or k == 0:
        empty = (queries.shape[0], k)
        return (
            torch.empty(empty, dtype=torch.float32, device=queries.device),
            torch.empty(empty, dtype=torch.int64, device=queries.device),
        )
    return _cuda_topk(queries, corpus, k) if backend == "cuda" else _torch_topk(queries, corpus, k)


def aligned_width(dim: int, dtype: torch.dtype) -> int:
    """Row length (elements) that starts every row of a contiguous [n, width] tensor on a kernel boundary."""
    per_chunk = _ALIGNMENT // torch.empty((), dtype=dtype).element_size()
    return -(-dim // per_chunk) * per_chunk


def _kernel_layout(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`x` (or a zero-padded copy) whose rows are unit-stride and start on 16-byte boundaries, and its row stride."""
    rows, dim = x.shape
    size = x.element_size()
    stride = x.stride(0) if rows > 1 else aligned_width(dim, x.dtype)  # one row: never stepped over
    if (dim == 1 or x.stride(1) == 1) and stride >= dim and (stride * size) % _ALIGNMENT == 0:
        if x.data_ptr() % _ALIGNMENT == 0:
            return x, stride
    padded = x.new_zeros((rows, aligned_width(dim, x.dtype)))  # zero columns add nothing to a dot product
    padded[:, :dim] = x
    return padded, padded.shape[1]


def _cuda_topk(queries: torch.Tensor, corpus: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    assert _EXTENSION is not None
    queries, query_stride = _kernel_layout(queries)
    corpus, corpus_stride = _kernel_layout(corpus)
    (m, d), n, dtype, device = queries.shape, corpus.shape[0], _DTYPE_NAMES[queries.dtype], queries.device
    scores = torch.empty((m, k), dtype=torch.float32, device=device)
    indices = torch.empty((m, k), dtype=torch.int64, device=device)
    with torch.cuda.device(device):  # the extension plans for, and launches on, the current device
        stream = torch.cuda.current_stream(device).cuda_stream
        for start in range(0, m, _QUERY_CHUNK):
            rows = min(_QUERY_CHUNK, m - start)
            # Freed at the next iteration: the caching allocator reuses it only after this stream's kernels.
            workspace = torch.empty(_EXTENSION.workspace_bytes(rows, n, d, k, dtype), dtype=torch.uint8, device=device)
            _EXTENSION.topk(
                queries[start].data_ptr(),
                query_stride,
                corpus.data_ptr(),
                corpus_stride,
                rows,
                n,
                d,
                k,
                dtype,
                scores[start].data_ptr(),
                indices[start].data_ptr(),
                workspace.data_ptr(),
                workspace.numel(),
                stream,
            )
    return scores, indices


def _torch_topk(queries: torch.Tensor, corpus: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = queries.shape[0], corpus.shape[0]
    scores = torch.empty((m, k), dtype=torch.float32, device=queries.device)
    indices = torch.empty((m, k), dtype=torch.int64, device=queries.device)
    for start in range(0, m, _QUERY_CHUNK):
        chunk = queries[start : start + _QUERY_CHUNK].float()  # [mq, d]
        # Bound both the scores [mq, rows] and the fp32 copy of the corpus chunk [rows, d].
        rows = max(256, min(_CHUNK_ELEMENTS // chunk.shape[0], 4 * _CHUNK_ELEMENTS // chunk.shape[1]))
        best: torch.Tensor | None = None  # [mq, <= k] keys, descending
        for row0 in range(0, n, rows):
            keys = score_keys(chunk @ corpus[row0 : row0 + rows].float().T, row0)  # [mq, rows]
            if best is not None:
                keys = torch.cat([best, keys], dim=1)
            best = keys.topk(min(k, keys.shape[1]), dim=1).values
        assert best is not None
        scores[start : start + chunk.shape[0]], indices[start : start + chunk.shape[0]] = decode_keys(best)
    return scores, indices


def score_keys(scores: torch.Tensor, row0: int) -> torch.Tensor:
    """int64 keys of fp32 scores [m, c] of rows row0.. : key order = (score, then lower row) order.

    The signed twin of csrc/keys.cuh: the high word maps the float bits to an int32 of the same order
    (negatives get their magnitude bits flipped), -0.0 becomes +0.0 and NaN the lowest value; the low
    word is 2^32 - 1 - row.
    """
    scores = torch.where(scores == 0, torch.zeros_like(scores), scores)  # -0.0 == +0.0 must tie
    bits = scores.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    ordered = torch.where(torch.isnan(scores), torch.full_like(ordered, -(2**31)), ordered)
    rows = torch.arange(row0, row0 + scores.shape[1], device=scores.device, dtype=torch.int64)
    return ordered.to(torch.int64) * _LOW_WORD + (_LOW_WORD - 1 - rows)


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of score_keys: (scores float32, rows int64)."""
    ordered = torch.div(keys, _LOW_WORD, rounding_mode="floor")
    rows = _LOW_WORD - 1 - (keys - ordered * _LOW_WORD)
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).to(torch.int32)
    return bits.view(torch.float32), rows
