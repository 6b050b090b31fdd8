"""The engine on CUDA through the Triton kernels: against CPU fp32, the torch backend, the official recipe,
itself repacked, padded into CUDA graphs and with shared prefixes. Skipped without CUDA."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
from transformers import AutoModelForCausalLM, AutoTokenizer

from qrerank import Embedder, Reranker

pytestmark = pytest.mark.gpu

DOCS = ["", "The capital of China is Beijing.", "Gravity attracts bodies. " * 20, "x", "long " * 400]
MANY_DOCS = [f"Document {i} about {'capitals' if i % 3 else 'gravity'}. " * (1 + i % 9) for i in range(60)]


def _reranker(path: Path, dtype: torch.dtype, **kwargs: object) -> Reranker:
    kwargs.setdefault("max_length", 256)
    return Reranker(path, device="cuda", dtype=dtype, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_reranker_on_cuda_matches_cpu(reranker_dir: Path, reranker: Reranker, dtype: torch.dtype, atol: float) -> None:
    gpu = _reranker(reranker_dir, dtype, max_batch_tokens=512)
    assert gpu.engine.options.backend == "triton" and gpu.engine.model.ops.name == "triton"
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_error_is_no_larger_than_the_torch_backends(reranker_dir: Path, dtype: torch.dtype) -> None:
    """Both backends in a low precision against the fp32 run: the kernels may not add error of their own."""
    exact = _reranker(reranker_dir, torch.float32, backend="torch").score("capital?", MANY_DOCS, raw=True)
    torch_err = np.abs(_reranker(reranker_dir, dtype, backend="torch").score("capital?", MANY_DOCS, raw=True) - exact)
    ours_err = np.abs(_reranker(reranker_dir, dtype).score("capital?", MANY_DOCS, raw=True) - exact)
    assert ours_err.max() <= 2 * torch_err.max() + 1e-3, (ours_err.max(), torch_err.max())
    assert ours_err.mean() <= 2 * torch_err.mean() + 1e-4, (ours_err.mean(), torch_err.mean())


def test_triton_matches_torch_backend_in_fp32(reranker_dir: Path) -> None:
    ours = _reranker(reranker_dir, torch.float32).score("capital?", MANY_DOCS, raw=True)
    theirs = _reranker(reranker_dir, torch.float32, backend="torch").score("capital?", MANY_DOCS, raw=True)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_reranker_on_cuda_matches_the_official_recipe(reranker_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(reranker_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(reranker_dir, dtype=torch.float32).cuda().eval()
    ours = _reranker(reranker_dir, torch.float32)
    ids = ours.prompt.encode([("capital?", d) for d in DOCS], None)
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to("cuda")
    with torch.no_grad():
        logits = model(**batch).logits[:, -1, :]
    yes, no = ours.prompt.yes_no_ids
    expected = torch.log_softmax(logits[:, [no, yes]], dim=1)[:, 1].exp().cpu().numpy()
    np.testing.assert_allclose(ours.score("capital?", DOCS), expected, rtol=0, atol=1e-4)


def test_cuda_packing_invariance(reranker_dir: Path) -> None:
    small = _reranker(reranker_dir, torch.float32, max_batch_tokens=200)
    together = small.score("q", DOCS * 4)
    alone = np.concatenate([small.score("q", [d]) for d in DOCS * 4])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_cuda_graph_replay_equals_eager(reranker_dir: Path, dtype: torch.dtype, atol: float) -> None:
    graphed = _reranker(reranker_dir, dtype, cuda_graphs=True, max_batch_tokens=1024, warmup=False)
    eager = _reranker(reranker_dir, dtype, cuda_graphs=False, max_batch_tokens=1024)
    for query, docs in [("q", DOCS[:2]), ("capital?", MANY_DOCS[:9]), ("q", DOCS[:2]), ("gravity", MANY_DOCS[20:27])]:
        np.testing.assert_allclose(graphed.score(query, docs, raw=True), eager.score(query, docs, raw=True), atol=atol)
    graphs = graphed.engine._graphs
    assert graphs is not None and len(graphs._graphs) >= 2  # replays, then a recapture for a new bucket


def test_shared_prefix_equals_plain_on_cuda(reranker_dir: Path) -> None:
    shared = _reranker(reranker_dir, torch.float32).score("capital?", MANY_DOCS, raw=True)
    plain = _reranker(reranker_dir, torch.float32, share_prefix=False).score("capital?", MANY_DOCS, raw=True)
    np.testing.assert_allclose(shared, plain, rtol=0, atol=1e-4)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_forward_never_waits_for_the_device(reranker_dir: Path, cuda_graphs: bool) -> None:
    ours = _reranker(reranker_dir, torch.bfloat16, cuda_graphs=cuda_graphs)
    groups = [ours.prompt.encode([("q", d) for d in MANY_DOCS[:10]], None)]
    ours.engine.run(groups)  # compiles kernels, captures graphs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        hidden = ours.engine.run(groups)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(hidden).all()


def test_warmup_leaves_nothing_to_compile_or_capture_for_requests(reranker_dir: Path) -> None:
    """After the warm-up at construction, requests of any size (odd token and sequence counts, with and
    without a shared prefix, graphed and eager) neither capture a graph nor compile a Triton kernel."""
    ours = _reranker(reranker_dir, torch.bfloat16, max_batch_tokens=4096)  # batches above 2048 tokens run eagerly
    graphs = ours.engine._graphs
    assert graphs is not None and sorted(graphs._graphs) == graphs.buckets(4096, 256)
    captured, compiled = len(graphs._graphs), []
    triton.knobs.runtime.jit_post_compile_hook = lambda *args, **kwargs: compiled.append(kwargs.get("repr"))
    try:
        for docs in (MANY_DOCS[:n] for n in (1, 2, 3, 5, 8, 13, 21, 34, 60)):
            ours.score("capital?", docs)
            ours.score_pairs([(f"q{i}", d) for i, d in enumerate(docs)])  # no shared prefix
        ours.score("capital?", MANY_DOCS * 2)  # eager, with a shared prefix
        torch.cuda.synchronize()
    finally:
        triton.knobs.runtime.jit_post_compile_hook = None
    assert compiled == [] and len(graphs._graphs) == captured


def test_graph_capture_while_other_threads_use_the_device(reranker_dir: Path) -> None:
    """First captures (no warm-up) on several threads while other threads allocate, multiply and copy to
    the host, as concurrent callers' post-processing does: thread-local capture mode keeps that legal."""
    graphed = _reranker(reranker_dir, torch.bfloat16, warmup=False)
    eager = _reranker(reranker_dir, torch.bfloat16, cuda_graphs=False)
    work = [("q", MANY_DOCS[i : i + 1 + i % 11]) for i in range(24)]
    expected = [eager.score(q, docs, raw=True) for q, docs in work]
    stop, errors = threading.Event(), []

    def churn() -> None:
        try:
            while not stop.is_set():
                x = torch.randn(512, 512, device="cuda")
                (x @ x).sum().cpu()
        except Exception as error:  # reported below: an exception here is the failure being tested
            errors.append(error)

    others = [threading.Thread(target=churn) for _ in range(2)]
    for thread in others:
        thread.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            got = list(pool.map(lambda request: graphed.score(*request, raw=True), work))
    finally:
        stop.set()
        for thread in others:
            thread.join()
    assert not errors, errors
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours, theirs, atol=5e-2)
