"""The elementwise Triton kernels (rms_norm, add_rms_norm, qk_norm_rope, silu_mul) against their torch twins.

Without a GPU they run on CPU tensors in Triton's interpreter (fp16 and fp32; tests/conftest.py sets
TRITON_INTERPRET=1); on a GPU on CUDA tensors, bf16 included, plus accuracy checks against fp32.
The kernels reproduce the reference's roundings, so same-dtype tolerances are an ulp or two.
"""

from __future__ import annotations

import pytest
import torch

from qrerank import reference
from qrerank.kernels.qk_norm_rope import qk_norm_rope
from qrerank.kernels.rms_norm import add_rms_norm, rms_norm
from qrerank.kernels.silu_mul import silu_mul

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
# (rtol, atol) against the same-dtype reference: rsqrt/exp implementations and summation order differ
# by an ulp of fp32, which can flip one rounding to the activation dtype.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 2e-3), torch.bfloat16: (8e-3, 1.6e-2)}
EPS = 1e-6


def _randn(*shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape)).to(device=DEVICE, dtype=dtype)


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    rtol, atol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)


def _strided_rows(rows: int, width: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """A [rows, width] view with row stride width + 7: rows not contiguous with each other."""
    return _randn(rows, width + 7, dtype=dtype, scale=scale)[:, 3 : 3 + width]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "hidden"), [(0, 33), (1, 64), (7, 33), (3, 1000)])
@pytest.mark.parametrize("strided", [False, True])
def test_rms_norm_matches_reference(dtype: torch.dtype, rows: int, hidden: int, strided: bool) -> None:
    torch.manual_seed(0)
    x = _strided_rows(rows, hidden, dtype, 3.0) if strided else _randn(rows, hidden, dtype=dtype, scale=3.0)
    weight = 1 + _randn(hidden, dtype=dtype, scale=0.3)
    got = rms_norm(x, weight, EPS)
    assert got.is_contiguous()
    _assert_close(got, reference.rms_norm(x, weight, EPS))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "hidden"), [(0, 33), (1, 64), (5, 1000)])
@pytest.mark.parametrize("strided", [False, True])
def test_add_rms_norm_matches_reference(dtype: torch.dtype, rows: int, hidden: int, strided: bool) -> None:
    torch.manual_seed(1)
    make = _strided_rows if strided else (lambda r, h, d, s: _randn(r, h, dtype=d, scale=s))
    x, residual = make(rows, hidden, dtype, 2.0), make(rows, hidden, dtype, 5.0)
    weight = 1 + _randn(hidden, dtype=dtype, scale=0.3)
    normed, summed = add_rms_norm(x, residual, weight, EPS)
    expected_normed, expected_sum = reference.add_rms_norm(x, residual, weight, EPS)
    torch.testing.assert_close(summed, expected_sum, rtol=0, atol=0)  # one fp32 add, one rounding: exact
    _assert_close(normed, expected_normed)


def _qkv_case(
    tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, strided: bool, max_positions: int = 512
) -> tuple[torch.Tensor, ...]:
    width = (heads + 2 * kv_heads) * head_dim
    qkv = _strided_rows(tokens, width, dtype, 2.0) if strided else _randn(tokens, width, dtype=dtype, scale=2.0)
    q_weight, k_weight = 1 + _randn(head_dim, dtype=dtype, scale=0.2), 1 + _randn(head_dim, dtype=dtype, scale=0.2)
    rope = reference.rope_cache(head_dim, 1e6, max_positions, DEVICE)
    positions = torch.randint(0, max_positions, (tokens,), device=DEVICE)  # not starting at 0, unordered
    if tokens > 1:
        positions[-1] = max_positions - 1  # the last row of the cache
    return qkv, q_weight, k_weight, rope, positions


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (4, 2), (8, 2), (3, 1)])  # GQA 1, 2, 4; heads not 2^k
@pytest.mark.parametrize("head_dim", [64, 128])
def test_qk_norm_rope_matches_reference(dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int) -> None:
    torch.manual_seed(2)
    args = _qkv_case(9, heads, kv_heads, head_dim, dtype, strided=False)
    q, k, v = qk_norm_rope(*args, heads, kv_heads, EPS)
    eq, ek, ev = reference.qk_norm_rope(*args, heads, kv_heads, EPS)
    assert q.is_contiguous() and k.is_contiguous()
    _assert_close(q, eq)
    _assert_close(k, ek)
    torch.testing.assert_close(v, ev, rtol=0, atol=0)


@pytest.mark.parametrize("tokens", [0, 1, 6])
def test_qk_norm_rope_strided_qkv_and_v_view(tokens: int) -> None:
    torch.manual_seed(3)
    heads, kv_heads, head_dim = 4, 2, 64
    args = _qkv_case(tokens, heads, kv_heads, head_dim, torch.float16, strided=True)
    q, k, v = qk_norm_rope(*args, heads, kv_heads, EPS)
    eq, ek, ev = reference.qk_norm_rope(*args, heads, kv_heads, EPS)
    _assert_close(q, eq)
    _assert_close(k, ek)
    assert v.shape == (tokens, kv_heads, head_dim)
    if tokens > 1:  # torch normalises the strides of size-1 dimensions
        assert v.stride(0) == args[0].stride(0) and v.stride(2) == 1
    if tokens:
        assert v.data_ptr() == args[0][:, (heads + kv_heads) * head_dim :].data_ptr()  # a view, not a copy
    torch.testing.assert_close(v, ev, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("tokens", "inter"), [(0, 33), (1, 40), (7, 33), (3, 1500)])
@pytest.mark.parametrize("strided", [False, True])
def test_silu_mul_matches_reference(dtype: torch.dtype, tokens: int, inter: int, strided: bool) -> None:
    torch.manual_seed(4)
    gate_up = (
        _strided_rows(tokens, 2 * inter, dtype, 4.0) if strided else _randn(tokens, 2 * inter, dtype=dtype, scale=4.0)
    )
    got = silu_mul(gate_up)
    assert got.is_contiguous()
    _assert_close(got, reference.silu_mul(gate_up))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the interpreter's numpy exp
def test_silu_mul_saturates_like_torch() -> None:
    """Very negative gates overflow exp(-g) to inf: silu is -0, never NaN; very positive ones pass through."""
    gate_up = torch.tensor([[-1e4, -100.0, 100.0, 3e4, 1.0, 2.0, 3.0, 0.5]], device=DEVICE)
    got = silu_mul(gate_up)
    assert not got.isnan().any()
    torch.testing.assert_close(got, reference.silu_mul(gate_up), rtol=1e-6, atol=0)


def test_rms_norm_rejects_bad_inputs() -> None:
    x, w = _randn(4, 8, dtype=torch.float32), _randn(8, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"x must be \[N, H\].*\(4, 8, 1\)"):
        rms_norm(x[..., None], w, EPS)
    with pytest.raises(ValueError, match=r"x must be contiguous in its last dimension.*\(1, 8\)"):
        rms_norm(x.t(), _randn(4, dtype=torch.float32), EPS)
    with pytest.raises(ValueError, match=r"x has dtype torch.float64"):
        rms_norm(x.double(), w.double(), EPS)
    with pytest.raises(ValueError, match=r"weight must be a \[8\] torch.float32.*\(7,\)"):
        rms_norm(x, w[:7], EPS)
    with pytest.raises(ValueError, match=r"weight must be .*torch.float16"):
        rms_norm(x, w.half(), EPS)
    with pytest.raises(ValueError, match=r"weight must be contiguous, got stride 2"):
        rms_norm(x, _randn(16, dtype=torch.float32)[::2], EPS)
    with pytest.raises(ValueError, match=r"eps must be a float >= 0, got -1.0"):
        rms_norm(x, w, -1.0)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        rms_norm([[1.0]], w, EPS)
    with pytest.raises(ValueError, match=r"residual must be a \(4, 8\) .*\(4, 7\)"):
        add_rms_norm(x, x[:, :7], w, EPS)
    with pytest.raises(ValueError, match=r"residual must be .*torch.float16"):
        add_rms_norm(x, x.half(), w, EPS)


def test_qk_norm_rope_rejects_bad_inputs() -> None:
    qkv, q_w, k_w, rope, positions = _qkv_case(3, 4, 2, 64, torch.float32, strided=False)
    good = (qkv, q_w, k_w, rope, positions, 4, 2, EPS)

    def call(**changes: object) -> None:
        names = ("qkv", "q_weight", "k_weight", "rope", "positions", "num_q_heads", "num_kv_heads", "eps")
        qk_norm_rope(**{**dict(zip(names, good)), **changes})

    with pytest.raises(ValueError, match=r"qkv must be \[T, 512\] .*Hq=4, Hkv=2, D=64.*\(3, 448\)"):
        call(qkv=qkv[:, :448])
    with pytest.raises(ValueError, match=r"qkv must be \[T, 640\] .*Hq=6"):
        call(num_q_heads=6)
    with pytest.raises(ValueError, match=r"qkv must be .*contiguous in its last dimension"):
        call(qkv=torch.randn(512, 3, device=DEVICE).t())
    with pytest.raises(ValueError, match=r"qkv has dtype torch.float64"):
        call(qkv=qkv.double(), q_weight=q_w.double(), k_weight=k_w.double())
    with pytest.raises(ValueError, match=r"D a power of two >= 2, got shape \(48,\)"):
        call(q_weight=q_w[:48], k_weight=k_w[:48])
    with pytest.raises(ValueError, match=r"k_weight must be a contiguous \[64\] torch.float32 tensor, got \(32,\)"):
        call(k_weight=k_w[:32])
    with pytest.raises(ValueError, match=r"q_weight must be .*torch.float16"):
        call(q_weight=q_w.half())
    with pytest.raises(
        ValueError, match=r"rope must be a \[P, 2, 32\] float32 tensor, got \(512, 2, 32\) torch.float64"
    ):
        call(rope=rope.double())
    with pytest.raises(ValueError, match=r"rope must be contiguous"):
        call(rope=rope.transpose(0, 2).contiguous().transpose(0, 2))
    with pytest.raises(ValueError, match=r"positions must be a \[3\] int64 tensor .*torch.int32"):
        call(positions=positions.int())
    with pytest.raises(ValueError, match=r"positions must be a \[3\] int64 tensor .*\(2,\)"):
        call(positions=positions[:2])
    with pytest.raises(TypeError, match=r"num_kv_heads must be an int, got float"):
        call(num_kv_heads=2.0)
    with pytest.raises(ValueError, match=r"num_q_heads must be >= 1, got 0"):
        call(num_q_heads=0)
    with pytest.raises(TypeError, match=r"rope must be a torch.Tensor, got NoneType"):
        call(rope=None)
    with pytest.raises(ValueError, match=r"eps must be a float >= 0, got nan"):
        call(eps=float("nan"))


def test_silu_mul_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"gate_up must be \[T, 2I\] .*got shape \(2, 7\)"):
        silu_mul(torch.randn(2, 7, device=DEVICE))
    with pytest.raises(ValueError, match=r"gate_up must be \[T, 2I\] .*got shape \(8,\)"):
        silu_mul(torch.randn(8, device=DEVICE))
    with pytest.raises(ValueError, match=r"gate_up has dtype torch.int64"):
        silu_mul(torch.ones(2, 8, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match=r"gate_up must be contiguous in its last dimension"):
        silu_mul(torch.randn(8, 2, device=DEVICE).t())
    with pytest.raises(TypeError, match=r"gate_up must be a torch.Tensor, got ndarray"):
        silu_mul(torch.randn(2, 8).numpy())


def _error_ratio(kernel_out: torch.Tensor, torch_out: torch.Tensor, exact: torch.Tensor) -> float:
    """max |kernel - fp32 truth| / max |torch same-dtype - fp32 truth|."""
    return (kernel_out.float() - exact).abs().max().item() / max((torch_out.float() - exact).abs().max().item(), 1e-30)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernels_no_less_accurate_than_torch_on_gpu(dtype: torch.dtype) -> None:
    """At Qwen3-0.6B shapes, each kernel's error vs the fp32 reference is at most 2x torch's in the same dtype."""
    torch.manual_seed(5)
    tokens, hidden, inter, heads, kv_heads, head_dim = 257, 1024, 3072, 16, 8, 128
    x = torch.randn(tokens, hidden, device="cuda").to(dtype)
    r = (4 * torch.randn(tokens, hidden, device="cuda")).to(dtype)
    w = (1 + 0.3 * torch.randn(hidden, device="cuda")).to(dtype)
    # the fp32 truth takes the same rounded inputs: only the kernels' own arithmetic is compared
    xr, rr, wr = x.float(), r.float(), w.float()
    assert _error_ratio(rms_norm(x, w, EPS), reference.rms_norm(x, w, EPS), reference.rms_norm(xr, wr, EPS)) <= 2
    normed, _ = add_rms_norm(x, r, w, EPS)
    exact = reference.rms_norm((xr + rr).to(dtype).float(), wr, EPS)  # the residual stream is stored in dtype
    assert _error_ratio(normed, reference.add_rms_norm(x, r, w, EPS)[0], exact) <= 2

    qkv, q_w, k_w, rope, positions = _qkv_case(
        tokens, heads, kv_heads, head_dim, dtype, strided=False, max_positions=8192
    )
    ours = qk_norm_rope(qkv, q_w, k_w, rope, positions, heads, kv_heads, EPS)
    theirs = reference.qk_norm_rope(qkv, q_w, k_w, rope, positions, heads, kv_heads, EPS)
    truth = reference.qk_norm_rope(qkv.float(), q_w.float(), k_w.float(), rope, positions, heads, kv_heads, EPS)
    for got, same_dtype, exact in zip(ours[:2], theirs[:2], truth[:2]):
        assert _error_ratio(got, same_dtype, exact) <= 2

    gate_up = (3 * torch.randn(tokens, 2 * inter, device="cuda")).to(dtype)
    exact = reference.silu_mul(gate_up.float())
    assert _error_ratio(silu_mul(gate_up), reference.silu_mul(gate_up), exact) <= 2
