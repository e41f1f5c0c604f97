"""fastae.nn.integer: the integer layers and entropy networks against their float (fake-quantized)
form and the float networks they are converted from, and the table index."""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.models.codec import CheckerboardCodec, checkerboard
from fastae.nn.integer import (OUTPUT_FRAC_BITS, IntegerCheckerboardContext, IntegerConv2d, IntegerConvTranspose2d,
                               IntegerHyperSynthesis, activation_bound, fake_quant, scale_table_index)
from fastae.ops.int_conv import ACC_LIMIT, ACT_MAX
from tests._util import backend_params, device_for

UNIT = 2.0 ** -OUTPUT_FRAC_BITS


def _model(seed=0, N=8, M=12):
    """A small checkerboard codec whose entropy networks have moved off their initialisation
    (the context's last layer starts at zero)."""
    torch.manual_seed(seed)
    model = CheckerboardCodec(N=N, M=M).eval()
    with torch.no_grad():
        for p in list(model.h_s.parameters()) + list(model.ctx.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _samples(model, n=3, size=8, seed=1):
    """(z, h_s outputs, decoded anchors) of random latents, as from_float wants them."""
    g = torch.Generator().manual_seed(seed)
    zs, hypers, anchors = [], [], []
    with torch.no_grad():
        for i in range(n):
            z = torch.round(torch.randn(1, model.N, size // 4, size // 4, generator=g) * (2 + 3 * i))
            hyper = model.h_s(z)
            means = model.ctx(hyper).chunk(2, 1)[0]
            y = means + torch.randn(means.shape, generator=g) * (1 + 2 * i)
            zs.append(z)
            hypers.append(hyper)
            anchors.append((torch.round(y - means) + means) * checkerboard(size, size))
    return zs, hypers, anchors


def _networks(model):
    zs, hypers, anchors = _samples(model)
    return (IntegerHyperSynthesis.from_float(model.h_s, zs),
            IntegerCheckerboardContext.from_float(model.ctx, hypers, anchors), zs, hypers, anchors)


@pytest.mark.parametrize("make", [
    lambda: IntegerConv2d(6, 10, 3, padding=1, activation="leaky_relu"),
    lambda: IntegerConv2d(6, 10, 1),
    lambda: IntegerConvTranspose2d(6, 10, 5, 2, 2, 1, activation="leaky_relu"),
    lambda: IntegerConv2d(6, 10, 3, padding=1, fixed_output=True),
], ids=["conv3_leaky", "conv1", "deconv5_leaky", "conv3_fixed"])
def test_layer_float_form_equals_the_integer_layer(make):
    """The fake-quantized forward is the integer layer's output times its scale, up to rounding
    ties and the multiplier's 2^-20: at most one step apart, and nearly always equal."""
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        layer.in_scale.copy_(torch.rand(6) * 0.1 + 0.01)
        layer.out_scale.copy_(torch.rand(10) * 0.05 + 0.01)
        layer.bias.normal_()
    layer.out_bound.fill_(2000)
    a = torch.randint(-3000, 3001, (2, 6, 5, 7))
    x = a.float() * layer.in_scale.view(1, -1, 1, 1)
    with torch.no_grad():
        steps = layer(x) / layer.out_scale.view(1, -1, 1, 1)
    got = layer.forward_int(a.to(torch.int16).permute(0, 2, 3, 1).contiguous()).permute(0, 3, 1, 2)
    assert got.dtype == (torch.int32 if layer.fixed_output else torch.int16)
    diff = (torch.round(steps).double() - got.double()).abs()  # steps carries fp32 rounding
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    if not layer.fixed_output:
        assert got.abs().max() <= 2000


def test_straight_through_gradients():
    layer = IntegerConv2d(4, 3, 3, padding=1, activation="leaky_relu")
    layer.out_bound.fill_(100)
    layer.out_scale.fill_(0.01)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.bias.grad is not None and x.grad.abs().sum() > 0
    # zero gradient where the activation is clipped
    v = torch.tensor([[[[0.5]], [[5.0]]]], requires_grad=True)
    fake_quant(v, torch.tensor([0.01, 0.01]), 100).sum().backward()
    assert v.grad.flatten().tolist() == [1.0, 0.0]


def test_constant_weights_gives_the_same_forward_and_input_gradients_without_weight_gradients():
    """Within constant_weights() a layer computes exactly its differentiable forward and the same
    input gradient, gives its weights none, and follows in-place changes of its parameters."""
    from fastae.nn.integer import constant_weights

    torch.manual_seed(0)
    layer = IntegerConvTranspose2d(4, 6, 5, 2, 2, 1, activation="leaky_relu")
    layer.out_scale.fill_(0.01)
    layer.out_bound.fill_(300)
    x0 = torch.randn(2, 4, 3, 5)

    def run(constant):
        x = x0.clone().requires_grad_(True)
        with constant_weights() if constant else torch.enable_grad():
            out = layer(x)
            out.square().sum().backward()
        return out.detach(), x.grad

    for _ in range(2):  # the second time from the cache
        want, want_grad = run(False)
        assert layer.weight.grad is not None
        layer.zero_grad(set_to_none=True)
        got, got_grad = run(True)
        assert layer.weight.grad is None and layer.bias.grad is None
        assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
        with torch.no_grad():
            layer.weight.mul_(1.5)  # the cache must notice
            layer.bias.add_(0.3)


def test_fake_quantization_under_autocast_stays_on_the_float32_grid():
    """Under bf16 autocast the convolution runs in bf16 but the output is rounded on its grid in
    float32: float32 multiples of out_scale (bf16's 8 bits could not hold steps up to 16383)."""
    torch.manual_seed(0)
    layer = IntegerConv2d(8, 5, 3, padding=1, activation="leaky_relu")
    layer.out_scale.copy_(torch.rand(5) * 0.001 + 0.0005)
    layer.out_bound.fill_(16000)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(1, 8, 6, 6) * 3)
    assert out.dtype == torch.float32
    steps = out / layer.out_scale.view(1, -1, 1, 1)
    assert steps.abs().max() > 300  # large enough that bf16 would have lost the grid
    assert (steps - torch.round(steps)).abs().max() < 1e-3


def test_hyper_synthesis_from_float():
    """Calibrated on the samples, the integer h_s gives the float one's means and scales to a few
    hundredths of their spread, never overflows, and its float form is its integer form."""
    model = _model()
    hs, _, zs, hypers, _ = _networks(model)
    assert all(int(layer.out_bound) <= ACT_MAX for layer in hs.layers[:-1])
    for z, want in zip(zs, hypers):
        got = hs.forward_int(z.int())
        assert got.dtype == torch.int32 and got.shape == want.shape
        assert (got * UNIT - want).abs().mean() < 0.03 * want.abs().mean() + UNIT
        with torch.no_grad():
            fake = hs(z)
        assert (fake / UNIT - got).abs().max() <= 64  # rounding ties of the hidden layers, carried on


def test_calibrated_bounds_keep_accumulators_in_int32():
    """max |x| * sum |w| + |bias| <= 2^30 for every integer layer at its calibrated clip."""
    model = _model(1)
    hs, ctx, *_ = _networks(model)
    pairs = [(int(hs.in_bound), hs.layers[0])] + [(int(a.out_bound), b) for a, b in zip(hs.layers, hs.layers[1:])]
    pairs += [(int(ctx.anchor_bound), ctx.context), (int(ctx.context.out_bound), ctx.params[0]),
              (int(ctx.params[0].out_bound), ctx.params[1])]
    for bound, layer in pairs:
        integer = layer.integer_layer()
        assert bound * integer.gain + integer.bias_max <= ACC_LIMIT // 2
    assert activation_bound(10 ** 9) == 1 and activation_bound(1) == ACT_MAX


def test_context_two_pass_int_follows_the_float_context():
    model = _model(2)
    hs, ctx, zs, _, _ = _networks(model)
    z = zs[1]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        hyper = model.h_s(z)
        y = model.ctx(hyper).chunk(2, 1)[0] + torch.randn(1, model.M, 8, 8, generator=g) * 3
        want, want_values = model.ctx.two_pass(hyper, lambda m, s: torch.round(y - m))
    seen = {}

    def anchor_values(means, scales):
        seen["means"] = means
        return torch.round(y - means.double() * UNIT).int()

    got, values = ctx.two_pass_int(hs.forward_int(z.int()), anchor_values)
    assert got.dtype == torch.int32 and got.shape == want.shape
    mask = checkerboard(8, 8)[0, 0]
    assert torch.equal(seen["means"][..., mask], got[:, :model.M][..., mask])  # the first pass decides the anchors
    assert (got * UNIT - want).abs().mean() < 0.05 * want.abs().mean() + UNIT
    assert (values[..., mask] != want_values.int()[..., mask]).float().mean() < 0.05


def test_context_anchors_pass_does_not_read_the_anchors():
    """The anchors' means and scales depend on hyper alone; the others' on the anchors."""
    model = _model(3)
    hs, ctx, zs, _, _ = _networks(model)
    hyper = hs.forward_int(zs[0].int())
    a, _ = ctx.two_pass_int(hyper, lambda m, s: torch.zeros_like(m))
    b, _ = ctx.two_pass_int(hyper, lambda m, s: torch.full_like(m, 7))
    mask = checkerboard(8, 8)[0, 0]
    assert torch.equal(a[..., mask], b[..., mask])
    assert not torch.equal(a[..., ~mask], b[..., ~mask])


@pytest.mark.parametrize("backend", backend_params())
def test_networks_give_the_same_integers_on_every_backend(backend):
    model = _model(4)
    hs, ctx, zs, _, _ = _networks(model)
    z = zs[2].int()

    def run(name, device):
        with fastae.ops.backend(name):
            hs_d, ctx_d = hs.to(device), ctx.to(device)
            hyper = hs_d.forward_int(z.to(device))
            params, _ = ctx_d.two_pass_int(hyper, lambda m, s: (m // 4096 + 3).int())
            return hyper.cpu(), params.cpu()

    want = run("torch", "cpu")
    got = run(backend, device_for(backend))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_state_dict_round_trip_keeps_the_integers():
    model = _model(5)
    hs, ctx, zs, _, _ = _networks(model)
    hs2, ctx2 = IntegerHyperSynthesis(model.N, model.M), IntegerCheckerboardContext(model.M)
    hs2.load_state_dict(hs.state_dict())
    ctx2.load_state_dict(ctx.state_dict())
    z = zs[0].int()
    assert torch.equal(hs2.forward_int(z), hs.forward_int(z))
    values = lambda m, s: torch.ones_like(m)  # noqa: E731
    assert torch.equal(ctx2.two_pass_int(hs.forward_int(z), values)[0], ctx.two_pass_int(hs.forward_int(z), values)[0])


def test_integer_layer_follows_the_parameters():
    layer = IntegerConv2d(4, 4, 1)
    first = layer.integer_layer()
    assert layer.integer_layer() is first  # cached
    with torch.no_grad():
        layer.weight.mul_(-1)
    assert not torch.equal(layer.integer_layer().weight, first.weight)


def test_scale_table_index_is_searchsorted_of_the_real_scale():
    thresholds = torch.tensor([0.124, 0.135, 0.5, 1.0, 200.25], dtype=torch.float64)
    # integers at, just below and just above each threshold, and far outside
    exact = torch.floor(thresholds * 2 ** OUTPUT_FRAC_BITS).long()
    scales = torch.cat([exact - 1, exact, exact + 1, torch.tensor([-5, 0, 1 << 30])]).int()
    want = torch.searchsorted(thresholds, scales.double() * UNIT)
    assert torch.equal(scale_table_index(scales, thresholds), want.int())
    assert scale_table_index(scales.view(2, 9), thresholds).shape == (2, 9)


def test_bad_activation_is_named():
    with pytest.raises(ValueError, match=r"activation must be 'none' or 'leaky_relu', got 'relu'"):
        IntegerConv2d(2, 2, 1, activation="relu")
    with pytest.raises(ValueError, match=r"expected a float convolution with weight \[3, 2, 1, 1\]"):
        IntegerConv2d(2, 3, 1).load_float(torch.nn.Conv2d(2, 3, 3))


def test_fake_quant_rounds_half_up():
    x = torch.tensor([0.5, -0.5, 1.5, -1.5, 7.0]).view(1, 5, 1, 1)
    out = fake_quant(x, torch.ones(5), 5)
    assert out.flatten().tolist() == [1.0, 0.0, 2.0, -1.0, 5.0]
    assert F.mse_loss(out, out) == 0
