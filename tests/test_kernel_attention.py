"""The Triton packed varlen attention kernel against its torch twin, reference.attention, on odd shapes.

Without CUDA the kernel runs in Triton's interpreter on CPU tensors, in fp32 and fp16 (bf16 dots are
wrong in the interpreter); on a GPU the same tests run on CUDA tensors and in bf16 too, plus the
GPU-only checks: precision relative to torch in the same dtype, no host synchronisation, CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qrerank import reference
from qrerank.kernels import attention as kernel

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# Against the fp32 reference: fp32 differs by summation order (and on a GPU by tf32x3 dots, ~2^-22 relative
# per product); 16-bit outputs round to half an ulp (2^-11 / 2^-8 relative), and P is rounded to the
# input dtype before the second dot.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _cu(lengths: list[int]) -> torch.Tensor:
    return F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32).to(DEVICE)


def _qkv(tokens: int, kv_heads: int, group: int, head_dim: int, dtype: torch.dtype) -> list[torch.Tensor]:
    shapes = [(tokens, kv_heads * group, head_dim), (tokens, kv_heads, head_dim), (tokens, kv_heads, head_dim)]
    return [torch.randn(shape, device=DEVICE).to(dtype) for shape in shapes]


def _assert_matches_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: list[int],
    prefix_offsets: list[int] | None = None,
    prefix_lens: list[int] | None = None,
) -> None:
    cu, scale = _cu(lengths), q.shape[-1] ** -0.5
    offsets = lens = None
    if prefix_offsets is not None and prefix_lens is not None:
        offsets = torch.tensor(prefix_offsets, dtype=torch.int32, device=DEVICE)
        lens = torch.tensor(prefix_lens, dtype=torch.int32, device=DEVICE)
    got = kernel.attention(q, k, v, cu, max(lengths, default=0), scale, offsets, lens)
    expected = reference.attention(q.float(), k.float(), v.float(), cu, max(lengths, default=0), scale, offsets, lens)
    assert got.shape == q.shape and got.dtype == q.dtype and got.is_contiguous()
    tol = TOLERANCE[q.dtype]
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group,head_dim", [(1, 128), (2, 128), (2, 64), (4, 64)])
def test_matches_reference_on_lengths_off_the_block_sizes(dtype: torch.dtype, group: int, head_dim: int) -> None:
    torch.manual_seed(0)
    lengths = [1, 5, 17, 64, 3, 129]
    _assert_matches_reference(*_qkv(sum(lengths), 4 // group, group, head_dim, dtype), lengths)


@pytest.mark.parametrize("lengths", [[1], [0, 1, 0], [0, 5, 0, 0, 3, 0], [200]])
def test_single_tokens_zero_length_and_multi_block_sequences(lengths: list[int]) -> None:
    torch.manual_seed(1)
    _assert_matches_reference(*_qkv(sum(lengths), 2, 2, 64, torch.float32), lengths)


def test_smaller_tiles_of_the_sm80_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 32-key tiles that pre-Hopper GPUs get for D = 128 (the interpreter runs the sm90 table otherwise)."""
    monkeypatch.setattr(kernel, "_family", lambda device: 80)
    torch.manual_seed(2)
    lengths = [1, 33, 64, 95]
    _assert_matches_reference(*_qkv(sum(lengths), 2, 2, 128, torch.float16), lengths)


@pytest.mark.parametrize("batches", [0, 3])
def test_no_tokens_gives_an_empty_output(batches: int) -> None:
    q, k, v = _qkv(0, 2, 2, 64, torch.float16)
    out = kernel.attention(q, k, v, _cu([0] * batches), 0, 0.125)
    assert out.shape == (0, 4, 64) and out.dtype == torch.float16


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prefix_len", [1, 13, 64, 77])
def test_documents_after_a_shared_prefix(dtype: torch.dtype, prefix_len: int) -> None:
    """The prefix packed once as sequence 0; four documents attend to it, one sequence has no prefix."""
    torch.manual_seed(3)
    lengths = [prefix_len, 4, 1, 9, 70, 6]
    q, k, v = _qkv(sum(lengths), 2, 2, 64, dtype)
    _assert_matches_reference(q, k, v, lengths, [0] * 6, [0, prefix_len, prefix_len, prefix_len, prefix_len, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_prefixes_in_one_batch(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    # prefix A (13 tokens) at 0, a document of A, prefix B (70) at 18, documents of A and B interleaved
    lengths = [13, 5, 70, 9, 1, 33, 2]
    offsets = [0, 0, 18, 18, 0, 18, 0]
    lens = [0, 13, 0, 70, 13, 70, 0]
    _assert_matches_reference(*_qkv(sum(lengths), 1, 4, 128, dtype), lengths, offsets, lens)


def test_strided_views_into_a_fused_qkv_projection() -> None:
    """q, k and v as the model passes them: views into one [T, (Hq + 2 Hkv) * D] tensor (here with padding)."""
    torch.manual_seed(5)
    lengths, heads, kv_heads, head_dim = [7, 40, 1], 4, 2, 64
    tokens, width = sum(lengths), (heads + 2 * kv_heads) * head_dim
    qkv = torch.randn(tokens, width + 32, device=DEVICE)[:, :width]  # row stride != width
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k, v = (
        q.unflatten(1, (heads, head_dim)),
        k.unflatten(1, (kv_heads, head_dim)),
        v.unflatten(1, (kv_heads, head_dim)),
    )
    assert not v.is_contiguous() and v.stride() == (width + 32, head_dim, 1)
    _assert_matches_reference(q, k, v, lengths)


def _valid_args() -> dict[str, object]:
    q, k, v = _qkv(10, 2, 2, 64, torch.float16)
    return {"q": q, "k": k, "v": v, "cu_seqlens": _cu([4, 6]), "max_seqlen": 6, "scale": 0.125}


BAD_ARGUMENTS = [
    ({"q": "q"}, TypeError, "q must be a torch.Tensor"),
    ({"q": torch.zeros(10, 256, dtype=torch.float16)}, ValueError, r"q must be \[tokens, heads, head_dim\]"),
    ({"k": torch.zeros(10, 2, 64, dtype=torch.float32)}, ValueError, "k has dtype torch.float32"),
    ({"q": torch.zeros(10, 4, 64, dtype=torch.float64)}, ValueError, "q has dtype torch.float64"),
    (
        {"q": torch.zeros(10, 64, 4, dtype=torch.float16).transpose(1, 2)},
        ValueError,
        "q must be contiguous in its last",
    ),
    ({"v": torch.zeros(10, 1, 64, dtype=torch.float16)}, ValueError, r"k \(10, 2, 64\) and v \(10, 1, 64\)"),
    ({"k": torch.zeros(9, 2, 64, dtype=torch.float16)}, ValueError, r"k \(9, 2, 64\)"),
    (
        {name: torch.zeros(10, heads, 96, dtype=torch.float16) for name, heads in (("q", 4), ("k", 2), ("v", 2))},
        ValueError,
        r"head_dim must be one of \(64, 128\), got 96",
    ),
    ({"q": torch.zeros(10, 3, 64, dtype=torch.float16)}, ValueError, r"q heads \(3\)"),
    ({"q": torch.zeros(10, 32, 64, dtype=torch.float16)}, ValueError, r"q heads \(32\) .* kv heads \(2\)"),
    ({"cu_seqlens": torch.tensor([0, 4, 10])}, ValueError, "cu_seqlens must be a contiguous 1-D int32"),
    ({"cu_seqlens": torch.tensor([0], dtype=torch.int32)}, ValueError, "cu_seqlens needs B"),
    ({"prefix_offsets": torch.zeros(2, dtype=torch.int32)}, ValueError, "pass both or neither"),
    (
        {"prefix_offsets": torch.zeros(2, dtype=torch.int32), "prefix_lens": torch.zeros(3, dtype=torch.int32)},
        ValueError,
        r"prefix_lens must be a contiguous int32 \[B=2\]",
    ),
    ({"max_seqlen": 6.0}, ValueError, "max_seqlen must be a non-negative int, got 6.0"),
    ({"scale": 0.0}, ValueError, "scale must be a positive finite number, got 0.0"),
    ({"scale": float("nan")}, ValueError, "scale must be a positive finite number, got nan"),
]


@pytest.mark.parametrize("changes,error,match", BAD_ARGUMENTS)
def test_rejects_bad_arguments(changes: dict[str, object], error: type[Exception], match: str) -> None:
    args = _valid_args()
    for name, value in changes.items():
        args[name] = value.to(DEVICE) if isinstance(value, torch.Tensor) else value
    with pytest.raises(error, match=match):
        kernel.attention(**args)


@pytest.mark.gpu
def test_rejects_tensors_on_different_devices_or_the_cpu() -> None:
    args = _valid_args()
    args["cu_seqlens"] = args["cu_seqlens"].cpu()
    with pytest.raises(ValueError, match="cu_seqlens is on cpu but q is on cuda"):
        kernel.attention(**args)
    args = {name: value.cpu() if isinstance(value, torch.Tensor) else value for name, value in args.items()}
    with pytest.raises(ValueError, match="q is on cpu; the Triton attention kernel needs CUDA tensors"):
        kernel.attention(**args)  # compiled (not interpreted) kernels cannot read host memory


def test_aot_signatures_follow_the_kernel_parameters() -> None:
    """A kernel parameter added without its AOT entry would make every AOT compile fail; catch it here."""
    specs = kernel.aot_configs()
    names = {spec.name for spec in specs}
    assert len(names) == len(specs)
    for spec in specs:
        assert list(spec.signature) == spec.kernel.arg_names
        assert {name for name, kind in spec.signature.items() if kind == "constexpr"} == set(spec.constexprs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_at_most_twice_torchs(dtype: torch.dtype) -> None:
    """Qwen3-0.6B shapes (16 q heads, 8 kv heads, D = 128), documents after a shared prefix."""
    torch.manual_seed(6)
    lengths, offsets, lens = [80, 512, 300, 17, 1000, 129], [0] * 6, [0, 80, 80, 80, 0, 0]
    q, k, v = _qkv(sum(lengths), 8, 2, 128, dtype)
    cu, scale = _cu(lengths), 128**-0.5
    offsets = torch.tensor(offsets, dtype=torch.int32, device=DEVICE)
    lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    exact = reference.attention(q.float(), k.float(), v.float(), cu, 1000, scale, offsets, lens)
    torch_error = (reference.attention(q, k, v, cu, 1000, scale, offsets, lens).float() - exact).abs().max()
    kernel_error = (kernel.attention(q, k, v, cu, 1000, scale, offsets, lens).float() - exact).abs().max()
    assert kernel_error <= 2 * torch_error, (kernel_error, torch_error)


@pytest.mark.gpu
def test_no_host_synchronisation_and_cuda_graph_replay_with_new_lengths() -> None:
    """The grid depends on T and B only: a captured launch stays right when the lengths change."""
    torch.manual_seed(7)
    q, k, v = _qkv(300, 2, 2, 128, torch.bfloat16)
    cu = _cu([100, 150, 50])
    kernel.attention(q, k, v, cu, 150, 0.1)  # compile outside the checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        kernel.attention(q, k, v, cu, 150, 0.1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel.attention(q, k, v, cu, 300, 0.1)
    cu.copy_(_cu([0, 299, 1]))
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.attention(q.float(), k.float(), v.float(), cu, 299, 0.1)
    torch.testing.assert_close(out.float(), expected, rtol=TOLERANCE[torch.bfloat16], atol=TOLERANCE[torch.bfloat16])
