"""fastae.ops.reconstruction_loss on every backend against torch.nn.functional's losses."""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.ops import KINDS, REDUCTIONS, reconstruction_loss
from tests._util import assert_close, backend_params, device_for

DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, 2e-2, 2e-2, id="bf16"),
    pytest.param(torch.float16, 5e-3, 5e-3, id="fp16"),
]
SHAPES = [(1,), (17,), (3, 5, 7), (257, 784)]


def oracle(kind, x, t, reduction, weight=None):
    loss = {
        "mse": lambda: F.mse_loss(x, t, reduction="none"),
        "l1": lambda: F.l1_loss(x, t, reduction="none"),
        "bce": lambda: F.binary_cross_entropy(x, t, reduction="none"),
        "bce_logits": lambda: F.binary_cross_entropy_with_logits(x, t, reduction="none"),
    }[kind]()
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "batch":
        return loss.sum() / (x.shape[0] if x.dim() else 1)
    return getattr(loss, reduction)()


def make_inputs(kind, shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    # bce: probabilities away from 0 and 1, whose gradient 1/(p(1-p)) overflows fp16 (see test_extreme_values)
    x = torch.rand(shape, generator=g) * 0.98 + 0.01 if kind == "bce" else torch.randn(shape, generator=g) * 2
    t = torch.rand(shape, generator=g)
    return x.to(device, dtype), t.to(device, dtype)


def check(backend, kind, reduction, x, t, atol, rtol, weight=None, grad_scale=None):
    """Loss and input gradient on `backend` against the fp32 oracle on the same values."""
    xg = x.detach().clone().requires_grad_()
    with fastae.ops.backend(backend):
        loss = reconstruction_loss(xg, t, kind, reduction, weight)
    xr = x.detach().float().requires_grad_()
    ref = oracle(kind, xr, t.float(), reduction, None if weight is None else weight.float())
    assert loss.dtype == x.dtype and loss.shape == ref.shape
    assert_close(loss, ref.detach().to(x.dtype), atol, rtol)  # a sum may overflow fp16, as in torch
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2)) if grad_scale is None else \
        torch.full(ref.shape, grad_scale)
    loss.backward(grad_out.to(x.device, x.dtype))
    ref.backward(grad_out.to(x.device))
    assert xg.grad.dtype == x.dtype
    assert_close(xg.grad, xr.grad, atol, rtol)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch(backend, kind, reduction, dtype, atol, rtol, shape):
    if backend == "triton" and device_for(backend).type == "cpu" and len(shape) == 2 and dtype != torch.float32:
        pytest.skip("the Triton interpreter is slow; the large shape runs in fp32 only")
    x, t = make_inputs(kind, shape, dtype, device_for(backend))
    check(backend, kind, reduction, x, t, atol, rtol)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_weight_broadcast_over_batch(backend, kind, reduction):
    device = device_for(backend)
    x, t = make_inputs(kind, (6, 4, 5), torch.float32, device)
    weight = torch.rand(4, 5, generator=torch.Generator().manual_seed(5)).to(device)
    check(backend, kind, reduction, x, t, 1e-5, 1e-5, weight=weight)


@pytest.mark.parametrize("backend", backend_params())
def test_extreme_values(backend):
    device = device_for(backend)
    # probabilities exactly 0 and 1 against matching and opposite targets: log clamped at -100
    p = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5], device=device)
    t = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5], device=device)
    for reduction in ("none", "sum"):
        check(backend, "bce", reduction, p, t, 1e-5, 1e-5, grad_scale=1.0)
    logits = torch.tensor([-120.0, -120.0, 120.0, 120.0, 0.0, -30.0], device=device)
    targets = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.3, 0.7], device=device)
    for reduction in ("none", "sum"):
        check(backend, "bce_logits", reduction, logits, targets, 1e-5, 1e-5)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("kind", ["mse", "l1", "bce_logits"])
def test_nan_and_inf_propagate(backend, kind):
    device = device_for(backend)
    x = torch.tensor([0.5, float("nan"), 0.25], device=device)
    t = torch.tensor([0.0, 0.5, 1.0], device=device)
    with fastae.ops.backend(backend):
        assert torch.isnan(reconstruction_loss(x, t, kind, "mean"))
        per = reconstruction_loss(x, t, kind, "none")
    assert torch.isnan(per[1]) and torch.isfinite(per[[0, 2]]).all()
    if kind != "bce_logits":  # inf - t is inf, as in torch
        with fastae.ops.backend(backend):
            assert reconstruction_loss(torch.tensor([float("inf")], device=device), t[:1], kind, "sum") == float("inf")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_bce_input_outside_unit_interval_raises_like_torch(backend, bad):
    x = torch.tensor([0.5, bad], device=device_for(backend))
    with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
        F.binary_cross_entropy(x, torch.zeros_like(x))
    with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
        with fastae.ops.backend(backend):
            reconstruction_loss(x, torch.zeros_like(x), "bce")


@pytest.mark.parametrize("backend", backend_params())
def test_non_contiguous(backend):
    device = device_for(backend)
    x, t = make_inputs("bce_logits", (12, 20), torch.float32, device)
    check(backend, "bce_logits", "batch", x[:, ::2], t.t().contiguous().t()[:, 3:13], 1e-5, 1e-5)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("kind", KINDS)
def test_target_gradient(backend, kind):
    device = device_for(backend)
    x, t = make_inputs(kind, (5, 3), torch.float32, device)
    tg = t.clone().requires_grad_()
    with fastae.ops.backend(backend):
        (reconstruction_loss(x, tg, kind, "mean") * 3).backward()
    tr = t.clone().requires_grad_()
    (oracle(kind, x, tr, "mean") * 3).backward()
    assert_close(tg.grad, tr.grad, 1e-5, 1e-5)


def test_backward_twice_with_retained_graph():
    x = torch.rand(4, 6, requires_grad=True)
    t = torch.rand(4, 6)
    loss = reconstruction_loss(x, t, "bce")
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    assert_close(x.grad, 2 * first, 1e-6, 1e-6)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck(backend, reduction):
    device = device_for(backend)
    x, t = make_inputs("bce", (6, 5), torch.float32, device)
    x.requires_grad_()
    args = (x, t, None, KINDS.index("bce"), REDUCTIONS.index(reduction), backend, True)
    torch.library.opcheck(torch.ops.fastae.recon_loss_fwd, args)
    with fastae.ops.backend(backend):
        torch.library.opcheck(torch.ops.fastae.reconstruction_loss, (x, t, "bce", reduction, None))


@pytest.mark.parametrize("backend", backend_params(["cpu", "torch"]))
def test_compiled_fullgraph_equals_eager(backend):
    torch.manual_seed(0)
    model = fastae.nn.FusedMLP([20, 8, 20], activation="relu", out_activation="sigmoid")
    loss_fn = fastae.nn.ReconstructionLoss("bce")
    x = torch.rand(32, 20)

    def step(forward):
        model.zero_grad()
        loss = forward()
        loss.backward()
        return [loss] + [p.grad.clone() for p in model.parameters()]

    with fastae.ops.backend(backend):
        eager = step(lambda: loss_fn(model(x), x))
        compiled = step(torch.compile(lambda: loss_fn(model(x), x), fullgraph=True))
    for got, want in zip(compiled, eager):
        assert_close(got, want, 1e-5, 1e-5)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((torch.zeros(4, 3), torch.zeros(3)), ValueError, r"expected target of shape \[4, 3\] like input, got \[3\]"),
        ((torch.zeros(4, 3), torch.zeros(4, 3), "huber"), ValueError,
         r"unknown kind 'huber'; expected one of \('mse', 'l1', 'bce', 'bce_logits'\)"),
        ((torch.zeros(4, 3), torch.zeros(4, 3), "mse", "avg"), ValueError,
         r"unknown reduction 'avg'; expected one of \('none', 'mean', 'sum', 'batch'\)"),
        ((torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.float64)), TypeError,
         r"expected target of dtype float32, float16 or bfloat16, got torch.float64"),
        ((torch.zeros(4, 3), torch.zeros(4, 3), "mse", "mean", torch.ones(4)), ValueError,
         r"expected weight of shape \[3\] \(input's shape without the batch dim"),
        ((torch.zeros(4, 3), [0.0] * 3), TypeError, r"expected target to be a Tensor, got list"),
    ],
)
def test_bad_input_is_named(args, error, message):
    with pytest.raises(error, match=message):
        reconstruction_loss(*args)


def test_autocast_computes_losses_in_fp32():
    x = torch.rand(4, 6, dtype=torch.bfloat16)
    t = torch.rand(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = reconstruction_loss(x, t, "bce")
    assert loss.dtype == torch.float32
    assert_close(loss, F.binary_cross_entropy(x.float(), t), 1e-6, 1e-6)


MIXED = [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.bfloat16),
         (torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("in_dtype, target_dtype", MIXED, ids=str)
def test_mixed_dtypes_are_the_promoted_computation(backend, kind, reduction, in_dtype, target_dtype):
    """A target of another dtype: the loss is what the promoted dtype's computation gives (on the
    same values), the input's gradient that computation's, rounded to input's dtype; bit for bit
    on the CPU backends, which read each tensor as it is, after the usual backward() of a scalar
    loss. (A gradient of another scale multiplies the rounded one, as for one dtype.)"""
    device = device_for(backend)
    x, t = make_inputs(kind, (33, 40), torch.float32, device, seed=3)
    x, t = x.to(in_dtype), t.to(target_dtype)
    common = torch.promote_types(in_dtype, target_dtype)
    xg = x.clone().requires_grad_()
    xc = x.to(common).requires_grad_()
    grad_out = torch.randn(33, 40, generator=torch.Generator().manual_seed(4)) if reduction == "none" else \
        torch.tensor(1.0)
    with fastae.ops.backend(backend):
        loss = reconstruction_loss(xg, t, kind, reduction)
        ref = reconstruction_loss(xc, t.to(common), kind, reduction)
    assert loss.dtype == common and xg.grad is None
    loss.backward(grad_out.to(device, common))
    ref.backward(grad_out.to(device, common))
    assert xg.grad.dtype == in_dtype
    if backend in ("cpu", "torch") and reduction != "none":
        assert torch.equal(loss, ref)
        assert torch.equal(xg.grad, xc.grad.to(in_dtype))
    else:
        assert_close(loss, ref, 1e-5, 1e-5)
        assert_close(xg.grad, xc.grad.to(in_dtype), 1e-2, 2e-2)


@pytest.mark.parametrize("backend", backend_params())
def test_mixed_dtypes_with_a_target_that_needs_grad(backend):
    device = device_for(backend)
    x, t = make_inputs("mse", (9, 7), torch.float32, device)
    xg, tg = x.to(torch.bfloat16).requires_grad_(), t.clone().requires_grad_()
    with fastae.ops.backend(backend):
        loss = reconstruction_loss(xg, tg, "mse", "sum")
    loss.backward()
    xr, tr = x.to(torch.bfloat16).float().requires_grad_(), t.clone().requires_grad_()
    F.mse_loss(xr, tr, reduction="sum").backward()
    assert loss.dtype == torch.float32 and xg.grad.dtype == torch.bfloat16 and tg.grad.dtype == torch.float32
    assert_close(xg.grad, xr.grad.to(torch.bfloat16), 0, 0)
    assert_close(tg.grad, tr.grad, 1e-6, 1e-6)


@pytest.mark.parametrize("backend", backend_params(["cpu", "torch"]))
def test_autocast_keeps_a_bf16_reconstruction_as_it_is(backend):
    """Under autocast a bf16 reconstruction is scored in fp32 against the fp32 target without a
    fp32 copy (no copy in the graph: its gradient comes straight back in bf16), with the numbers
    of the fp32 copy's computation."""
    x, t = make_inputs("mse", (64, 30), torch.float32, "cpu")
    xg = x.to(torch.bfloat16).requires_grad_()
    xr = x.to(torch.bfloat16).requires_grad_()
    with fastae.ops.backend(backend):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = reconstruction_loss(xg, t, "mse", "mean")
        ref = reconstruction_loss(xr.float(), t, "mse", "mean")
    assert loss.dtype == torch.float32 and loss.grad_fn.next_functions[0][0].name() != "ToCopyBackward0"
    loss.backward()
    ref.backward()
    assert torch.equal(loss, ref) and torch.equal(xg.grad, xr.grad)


def test_mixed_dtype_opcheck():
    x, t = make_inputs("mse", (6, 5), torch.float32, "cpu")
    x = x.to(torch.bfloat16).requires_grad_()
    for backend in ("cpu", "torch"):
        args = (x, t, None, KINDS.index("mse"), REDUCTIONS.index("mean"), backend, True)
        torch.library.opcheck(torch.ops.fastae.recon_loss_fwd, args)
