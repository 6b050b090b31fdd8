"""The same engine on CUDA (torch reference ops for now): agrees with the fp32 CPU run. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qrerank import Embedder, Reranker

pytestmark = pytest.mark.gpu

DOCS = ["", "The capital of China is Beijing.", "Gravity attracts bodies. " * 20, "x", "long " * 400]


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_reranker_on_cuda_matches_cpu(reranker_dir: Path, reranker: Reranker, dtype: torch.dtype, atol: float) -> None:
    gpu = Reranker(reranker_dir, device="cuda", dtype=dtype, max_length=256, max_batch_tokens=512)
    np.testing.assert_allclose(gpu.score("capital?", DOCS), reranker.score("capital?", DOCS), rtol=0, atol=atol)


@pytest.mark.parametrize(("dtype", "min_cosine"), [(torch.float32, 0.99999), (torch.bfloat16, 0.99)])
def test_embedder_on_cuda_matches_cpu(
    embedding_dir: Path, embedder: Embedder, dtype: torch.dtype, min_cosine: float
) -> None:
    gpu = Embedder(embedding_dir, device="cuda", dtype=dtype, max_length=256, max_batch_tokens=512)
    on_gpu = gpu.embed(DOCS, as_tensor=True)
    assert on_gpu.device.type == "cuda"
    cosine = (on_gpu.cpu().numpy() * embedder.embed(DOCS)).sum(axis=1)
    assert cosine.min() >= min_cosine, cosine


def test_cuda_packing_invariance(reranker_dir: Path) -> None:
    small = Reranker(reranker_dir, device="cuda", dtype=torch.float32, max_length=256, max_batch_tokens=200)
    together = small.score("q", DOCS * 4)
    alone = np.concatenate([small.score("q", [d]) for d in DOCS * 4])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
