"""Index: a corpus of embeddings (and optionally its texts) kept on one device, searched exactly with topk."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from qrerank.embedder import Embedder
from qrerank.files import open_regular
from qrerank.prompts import DEFAULT_RERANK_INSTRUCTION
from qrerank.safetensors_writer import save_atomic
from qrerank.similarity import MAX_K, aligned_width, as_matrix, check_finite, resolve_backend, run_topk
from qrerank.validation import check_bool, check_int, check_optional_str, check_str_list, resolve_device

FORMAT = "qrerank.Index/1"  # safetensors metadata "format" of a saved index
DEFAULT_TASK = DEFAULT_RERANK_INSTRUCTION  # the query instruction when search() embeds texts
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TENSORS = {"vectors"}, {"vectors", "texts_utf8", "text_offsets"}


class Index:
    """Vectors [n, d] on one device for exact inner-product search (cosine similarity for unit vectors).

    `data`: None (empty), embeddings [n, d] (a torch tensor or numpy array), or a list of texts that
    `embedder` turns into embeddings (Matryoshka width `dim`, default the embedder's). `texts`: the
    documents of embeddings given as `data` (optional; `qrerank.search` needs them to rerank). An index
    holds a text for every vector or for none. `device`: default the embedder's, else the tensor's, else
    CUDA when available. `dtype` of the stored vectors (float32, bfloat16, float16): default bfloat16 on
    CUDA, float32 on CPU; added vectors and queries are cast to it.
    """

    def __init__(
        self,
        data: Any = None,
        *,
        embedder: Embedder | None = None,
        texts: Sequence[str] | None = None,
        dim: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if embedder is not None and not isinstance(embedder, Embedder):
            raise TypeError(f"embedder must be a qrerank.Embedder, got {type(embedder).__name__}")
        if device is None and embedder is not None:
            device = embedder.device
        elif device is None and isinstance(data, torch.Tensor):
            device = data.device
        self.device = resolve_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be torch.float32, bfloat16 or float16, got {dtype}")
        self.dtype = dtype
        self.embedder = embedder
        if dim is not None:
            check_int(dim, "dim", 1)
        self.dim = dim if dim is not None else embedder.dim if embedder is not None else None
        self._store = torch.zeros((0, 0), dtype=dtype, device=self.device)  # [capacity, aligned width]
        self._size = 0
        self._texts: list[str] | None = None  # None: no texts (or, while empty, not decided yet)
        if data is not None:
            self.add(data, texts=texts)
        elif texts is not None:
            raise ValueError("texts were given without the embeddings they describe (data)")

    def __len__(self) -> int:
        return self._size

    @property
    def vectors(self) -> torch.Tensor:
        """The stored embeddings [n, d] (a view; rows start on 16-byte boundaries for the kernel)."""
        return self._store[: self._size, : self.dim or 0]

    @property
    def texts(self) -> list[str] | None:
        return None if self._texts is None else list(self._texts)

    def add(self, data: Any, *, texts: Sequence[str] | None = None) -> None:
        """Append texts (embedded by this index's embedder) or embeddings [b, d] with optional `texts`."""
        if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
            if texts is not None:
                raise ValueError("texts= is for embeddings; a list of texts is embedded and kept as it is")
            texts = check_str_list(data, "data")
            vectors = self._embed(texts, instruction=None)
        else:
            vectors = as_matrix(data, "data")
            if texts is not None:
                texts = check_str_list(texts, "texts")
                if len(texts) != vectors.shape[0]:
                    raise ValueError(f"texts has {len(texts)} entries for {vectors.shape[0]} embeddings")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"embeddings must have dimension {self.dim} (the index's), got {tuple(vectors.shape)}")
        if self._size > 0 and (texts is None) != (self._texts is None):
            have = "has a text for every vector" if self._texts is not None else "has no texts"
            raise ValueError(
                f"this index {have}; add embeddings {'with' if self._texts is not None else 'without'} texts"
            )
        check_finite(vectors, "embeddings")
        self.dim = vectors.shape[1]
        self._append(vectors.to(device=self.device, dtype=self.dtype))
        if texts is not None:
            self._texts = self._texts if self._texts is not None else []
            self._texts.extend(texts)

    def search(
        self, queries: Any, k: int = 10, *, instruction: str | None = None, as_tensor: bool = False
    ) -> tuple[Any, Any]:
        """Scores float32 [m, k'] and indices int64 [m, k'] of each query's best rows (k' = min(k, len)).

        `queries`: a str or list of str (embedded by this index's embedder as queries, with `instruction`,
        default DEFAULT_TASK), or embeddings [m, d] / [d] (cast to the index's dtype and device).
        Ties by lower index; see `qrerank.topk`.
        Numpy arrays unless `as_tensor` (then tensors on the index's device).
        """
        k = check_int(k, "k", 1, MAX_K)
        check_optional_str(instruction, "instruction")
        check_bool(as_tensor, "as_tensor")
        if isinstance(queries, (str, list, tuple)):
            texts = [queries] if isinstance(queries, str) else check_str_list(queries, "queries")
            vectors = self._embed(texts, instruction=DEFAULT_TASK if instruction is None else instruction)
        else:
            if isinstance(queries, (torch.Tensor, np.ndarray)) and queries.ndim == 1:
                queries = queries[None]
            vectors = as_matrix(queries, "queries")
            if self.dim is not None and vectors.shape[1] != self.dim:
                raise ValueError(f"queries must have dimension {self.dim} (the index's), got {tuple(vectors.shape)}")
            check_finite(vectors, "queries")
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        scores, indices = run_topk(vectors, self.vectors, k, resolve_backend(None, self.device))
        return (scores, indices) if as_tensor else (scores.cpu().numpy(), indices.cpu().numpy())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vectors (in the index's dtype) and texts to one safetensors file, atomically: a reader or
        a crash finds the old file or the new one (see `qrerank.safetensors_writer`)."""
        tensors = {"vectors": self.vectors.contiguous().cpu()}
        if self._texts is not None:
            encoded = [t.encode("utf-8") for t in self._texts]
            offsets = np.cumsum([0, *(len(b) for b in encoded)], dtype=np.int64)
            tensors["texts_utf8"] = torch.from_numpy(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy())
            tensors["text_offsets"] = torch.from_numpy(offsets)
        save_atomic(tensors, path, metadata={"format": FORMAT, "dim": str(self.dim or 0)})

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, embedder: Embedder | None = None, device: str | torch.device | None = None
    ) -> Index:
        """An index saved by `save`; `embedder` (optional) lets it embed text queries and additions.

        A file that is not a complete, consistent saved index is a ValueError naming it and the bad field.
        """
        metadata, tensors = _read_index_file(Path(path))
        name = os.fspath(path)
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{name!r} is not a saved qrerank.Index (format {metadata.get('format')!r:.80})")
        if set(tensors) not in _TENSORS:
            raise ValueError(f"{name!r} holds tensors {sorted(tensors)}, expected {sorted(_TENSORS[1])}")
        vectors = tensors["vectors"]
        if vectors.dtype not in _DTYPES or vectors.ndim != 2:
            raise ValueError(
                f"{name!r}: vectors must be a float32/bfloat16/float16 matrix, got {vectors.dtype} "
                f"of shape {list(vectors.shape)}"
            )
        dim = metadata.get("dim", "")
        if not (dim.isascii() and dim.isdigit() and len(dim) < 10):
            raise ValueError(f"{name!r}: metadata dim must be a non-negative integer, got {dim!r:.80}")
        dim = int(dim)
        if vectors.shape[1] not in ((dim,) if vectors.shape[0] else (0, dim)):
            raise ValueError(f"{name!r}: vectors of shape {list(vectors.shape)} disagree with dim {dim}")
        texts = None
        if "text_offsets" in tensors:
            texts = _decode_texts(tensors["texts_utf8"], tensors["text_offsets"], vectors.shape[0], name)
        index = cls(embedder=embedder, dim=dim or None, device=device, dtype=vectors.dtype)
        if vectors.shape[0] > 0:
            index.add(vectors, texts=texts)
        return index

    def _embed(self, texts: list[str], instruction: str | None) -> torch.Tensor:
        if self.embedder is None:
            raise ValueError("embedding texts needs an embedder: Index(..., embedder=qrerank.Embedder(...))")
        if not texts:
            return torch.empty((0, self.dim or self.embedder.dim), dtype=torch.float32, device=self.device)
        return self.embedder.embed(texts, instruction=instruction, dim=self.dim, as_tensor=True)

    def _append(self, vectors: torch.Tensor) -> None:
        total = self._size + vectors.shape[0]
        if total > self._store.shape[0] or self._store.shape[1] == 0:  # grow geometrically: amortised O(1) adds
            grown = torch.zeros(
                (max(total, 2 * self._store.shape[0], 16), aligned_width(self.dim, self.dtype)),
                dtype=self.dtype,
                device=self.device,
            )
            grown[: self._size, : self._store.shape[1]] = self._store[: self._size]
            self._store = grown
        self._store[self._size : total, : self.dim] = vectors
        self._size = total


def _read_index_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file, any failure a ValueError naming the file."""
    open_regular(path).close()  # a FIFO or directory is refused here instead of blocking or failing later
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return f.metadata() or {}, {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:  # truncated, corrupt, unreadable
        raise ValueError(f"{os.fspath(path)!r} is not a readable safetensors file: {err}") from None


def _decode_texts(data: torch.Tensor, offsets: torch.Tensor, count: int, name: str) -> list[str]:
    if data.dtype != torch.uint8 or data.ndim != 1:
        raise ValueError(f"{name!r}: texts_utf8 must be uint8 bytes, got {data.dtype} of shape {list(data.shape)}")
    if offsets.dtype != torch.int64 or offsets.ndim != 1:
        raise ValueError(f"{name!r}: text_offsets must be int64, got {offsets.dtype} of shape {list(offsets.shape)}")
    bounds = offsets.tolist()
    if len(bounds) != count + 1 or bounds[0] != 0 or any(a > b for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"{name!r}: text_offsets do not describe {count} texts")
    raw = data.numpy().tobytes()
    if bounds[-1] != len(raw):
        raise ValueError(f"{name!r}: text_offsets end at byte {bounds[-1]}, but texts_utf8 has {len(raw)} bytes")
    try:
        return [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds)]
    except UnicodeDecodeError as err:
        raise ValueError(f"{name!r}: texts_utf8 is not UTF-8 text ({err})") from None
