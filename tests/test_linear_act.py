"""fastae.ops.linear_act on every backend against the plain-PyTorch oracle act(F.linear(x, w, b))."""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.ops import ACTIVATIONS, linear_act
from tests._util import assert_close, backend_params, device_for

DTYPES = [
    pytest.param(torch.float32, 1e-4, 1e-4, id="fp32"),
    pytest.param(torch.bfloat16, 2e-2, 2e-2, id="bf16"),
    pytest.param(torch.float16, 5e-3, 5e-3, id="fp16"),
]
# (batch, in, out): batch 0 and 1, in/out of 1, 17 and 784, nothing a multiple of a block.
SHAPES = [(0, 17, 3), (1, 1, 1), (3, 784, 17), (127, 17, 784), (3, 17, 1)]


def oracle(act, x, w, b):
    pre = F.linear(x, w, b)
    if act == "none":
        return pre
    if act == "leaky_relu":
        return F.leaky_relu(pre, 0.01)
    if act == "gelu_tanh":
        return F.gelu(pre, approximate="tanh")
    return getattr(F, act)(pre)


def make_inputs(batch_shape, in_f, out_f, dtype, device, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch_shape, in_f, generator=g)
    bound = in_f**-0.5  # nn.Linear's init keeps pre-activations O(1)
    w = (torch.rand(out_f, in_f, generator=g) * 2 - 1) * bound
    b = (torch.rand(out_f, generator=g) * 2 - 1) * bound if bias else None
    return [None if t is None else t.to(device=device, dtype=dtype) for t in (x, w, b)]


def run(backend, act, x, w, b, grad_out):
    """Forward and gradients on `backend`, and the same in fp32 PyTorch from the same values."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    with fastae.ops.backend(backend):
        out = linear_act(*leaves, act)
    out.backward(grad_out)
    ref_leaves = [t.detach().float().requires_grad_() if t is not None else None for t in (x, w, b)]
    ref = oracle(act, *ref_leaves)
    ref.backward(grad_out.float())
    grads = [(t.grad, r.grad) for t, r in zip(leaves, ref_leaves) if t is not None]
    return out, ref, grads


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("batch, in_f, out_f", SHAPES)
def test_matches_oracle(backend, act, dtype, atol, rtol, batch, in_f, out_f):
    if backend == "triton" and device_for("triton").type == "cpu" and batch * in_f * out_f > 50_000 and dtype != torch.float32:
        pytest.skip("the Triton interpreter is slow; large shapes run in fp32 only")
    device = device_for(backend)
    x, w, b = make_inputs((batch,), in_f, out_f, dtype, device)
    grad_out = torch.randn(batch, out_f, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, ref, grads = run(backend, act, x, w, b, grad_out)
    assert out.shape == (batch, out_f) and out.dtype == dtype and out.device.type == device.type
    assert_close(out, ref, atol, rtol)
    for got, want in grads:
        assert got.dtype == dtype and got.shape == want.shape
        assert_close(got, want, atol, rtol)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("act", ["relu", "sigmoid", "gelu"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[1:])
def test_half_rows_wider_than_a_conversion_block(backend, act, dtype, atol, rtol):
    """bf16/fp16 rows of more than the CPU kernel's 1024-value conversion block (the conv AE's
    3136-wide decoder layer): backward converts each row block by block, with the bias gradient
    summed across blocks; 2500 is not a multiple of the block."""
    if backend == "triton" and device_for("triton").type == "cpu":
        pytest.skip("the Triton interpreter is slow; large shapes run in fp32 only")
    device = device_for(backend)
    x, w, b = make_inputs((5,), 17, 2500, dtype, device)
    grad_out = torch.randn(5, 2500, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, ref, grads = run(backend, act, x, w, b, grad_out)
    assert_close(out, ref, atol, rtol)
    for got, want in grads:
        assert_close(got, want, atol, rtol)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_leading_dims_and_no_bias(backend, act):
    device = device_for(backend)
    x, w, _ = make_inputs((2, 3, 5), 33, 19, torch.float32, device, bias=False)
    grad_out = torch.randn(2, 3, 5, 19).to(device)
    out, ref, grads = run(backend, act, x, w, None, grad_out)
    assert out.shape == (2, 3, 5, 19)
    assert_close(out, ref, 1e-4, 1e-4)
    for got, want in grads:
        assert_close(got, want, 1e-4, 1e-4)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("act", ["sigmoid", "silu"])
def test_non_contiguous(backend, act):
    device = device_for(backend)
    x, w, b = make_inputs((40,), 66, 34, torch.float32, device)
    x = x[:, ::2]  # [40, 33], row stride 66
    w = w.t().contiguous().t()[::2]  # [17, 66] column-major, then every other row
    w = w[:, ::2]  # [17, 33]
    b = b[::2]
    grad_out = torch.randn(17, 40).to(device).t()  # [40, 17] transposed
    assert not (x.is_contiguous() or w.is_contiguous() or grad_out.is_contiguous())
    out, ref, grads = run(backend, act, x, w, b, grad_out)
    assert_close(out, ref, 1e-4, 1e-4)
    for got, want in grads:
        assert_close(got, want, 1e-4, 1e-4)


@pytest.mark.parametrize("backend", backend_params())
def test_relu_special_values(backend):
    """relu lets NaN through and has zero gradient at a pre-activation of exactly 0, like torch."""
    device = device_for(backend)
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [float("nan"), 1.0]], device=device, requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, -1.0]], device=device, requires_grad=True)
    with fastae.ops.backend(backend):
        out = linear_act(x, w, None, "relu")
    out.sum().backward()
    assert out[0].tolist() == [1.0, 0.0] and out[1].tolist() == [0.0, 0.0]
    assert torch.isnan(out[2, 0])
    assert x.grad[1].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("backend", backend_params())
def test_gradient_only_where_required(backend):
    device = device_for(backend)
    x, w, b = make_inputs((9,), 12, 5, torch.float32, device)
    w.requires_grad_()
    with fastae.ops.backend(backend):
        linear_act(x, w, b, "tanh").sum().backward()
    ref_w = w.detach().clone().requires_grad_()
    oracle("tanh", x, ref_w, b).sum().backward()
    assert x.grad is None and b.grad is None
    assert_close(w.grad, ref_w.grad, 1e-4, 1e-4)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_opcheck(backend, act):
    device = device_for(backend)
    x, w, b = make_inputs((6,), 10, 7, torch.float32, device)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    act_id = ACTIVATIONS.index(act)
    torch.library.opcheck(torch.ops.fastae.linear_act_fwd, (x, w, b, act_id, backend, act == "gelu"))
    saved = torch.randn(6, 7, device=device)
    grad_out = torch.randn(6, 7, device=device)
    torch.library.opcheck(
        torch.ops.fastae.linear_act_bwd, (grad_out, x.detach(), w.detach(), saved, act_id, backend, True, True, True)
    )
    with fastae.ops.backend(backend):
        torch.library.opcheck(torch.ops.fastae.linear_act, (x, w, b, act))


def test_autocast_runs_in_the_autocast_dtype():
    x, w, b = make_inputs((4,), 8, 3, torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_act(x, w, b, "relu")
    assert out.dtype == torch.bfloat16
    assert_close(out, oracle("relu", x, w, b), 2e-2, 2e-2)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"w": torch.zeros(3, 5)}, ValueError, r"expected x of shape \[..., in\] with in=5 \(weight is \[3, 5\]\), got \[2, 4\]"),
        ({"w": torch.zeros(4)}, ValueError, r"expected weight of shape \[out, in\], got 1-D \[4\]"),
        ({"b": torch.zeros(4)}, ValueError, r"expected bias of shape \[3\], got \[4\]"),
        ({"b": torch.zeros(3, dtype=torch.float64)}, TypeError, r"expected bias of dtype torch.float32 like x, got torch.float64"),
        ({"x": torch.zeros(2, 4, dtype=torch.int64)}, TypeError, r"expected x of dtype float32, float16 or bfloat16, got torch.int64"),
        ({"x": torch.zeros(2, 4, device="meta")}, ValueError, r"expected weight on meta like x, got cpu"),
        ({"act": "swish"}, ValueError, r"unknown activation 'swish'; expected one of \('none', 'relu'"),
        ({"x": [[1.0] * 4]}, TypeError, r"expected x to be a Tensor, got list"),
    ],
)
def test_bad_input_is_named(kwargs, error, message):
    args = {"x": torch.zeros(2, 4), "w": torch.zeros(3, 4), "b": torch.zeros(3), "act": "relu"} | kwargs
    with pytest.raises(error, match=message):
        linear_act(args["x"], args["w"], args["b"], args["act"])


def test_autocast_chains_layers():
    """A layer's bf16 output meets the next layer's fp32 weight: autocast casts before checking."""
    mlp = fastae.nn.FusedMLP([8, 6, 4], activation="relu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(torch.rand(3, 8))
    assert out.dtype == torch.bfloat16
