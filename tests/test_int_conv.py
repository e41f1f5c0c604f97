"""fastae.ops.int_conv2d: the plans against torch's convolutions, and every backend and CPU
instruction-set build bit for bit against the torch oracle."""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.models.codec import checkerboard
from fastae.ops import int_conv as ic
from fastae.ops.int_conv import IntConvLayer, conv_plan, conv_transpose_plan, int_conv2d, requantize
from tests._util import backend_params, device_for

CPU_BUILT = fastae.ops.available_backends()["cpu"][0]
# The CPU builds this machine runs (AVX-512 implies AVX2).
if CPU_BUILT:
    import fastae._C  # noqa: F401

# (name, plan, transposed weight, the torch convolution it must equal)
PLANS = [
    ("conv1", conv_plan(1), False, lambda x, w: F.conv2d(x, w)),
    ("conv3", conv_plan(3, 1), False, lambda x, w: F.conv2d(x, w, padding=1)),
    ("conv5", conv_plan(5, 2), False, lambda x, w: F.conv2d(x, w, padding=2)),
    ("conv3_valid", conv_plan(3), False, lambda x, w: F.conv2d(x, w)),
    ("deconv5", conv_transpose_plan(5, 2, 2, 1), True,
     lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=2, output_padding=1)),
    ("deconv3", conv_transpose_plan(3, 2, 1, 1), True,
     lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)),
    ("deconv4_s3", conv_transpose_plan(4, 3, 1, 0), True, lambda x, w: F.conv_transpose2d(x, w, stride=3, padding=1)),
]


def _layer(plan, transposed, cin, cout, g, act=3000, out_dtype=torch.int16, leaky=True):
    """A random layer whose accumulators stay in int32 for activations up to ``act`` in magnitude."""
    k = plan.kernel
    shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
    w = torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)
    bias = torch.randint(-50_000, 50_000, (cout,), generator=g, dtype=torch.int32)
    mult = torch.stack([torch.randint(1 << 8, 1 << 20, (cout,), generator=g),
                        torch.randint(0, 1 << 12, (cout,), generator=g) if leaky
                        else torch.randint(1 << 8, 1 << 20, (cout,), generator=g)]).int()
    shift = torch.randint(12, 30, (cout,), generator=g, dtype=torch.int32)
    info = torch.iinfo(out_dtype)
    lo, hi = (ic.ACT_MIN, ic.ACT_MAX) if out_dtype == torch.int16 else (info.min, info.max)
    return IntConvLayer.make(w, bias, mult, shift, plan, lo, hi, out_dtype), w


def _input(n, h, w, c, g, act=3000):
    return torch.randint(-act, act + 1, (n, h, w, c), generator=g, dtype=torch.int16)


def _run(backend, x, layer, isa=None):
    with fastae.ops.backend(backend):
        return int_conv2d(x.to(device_for(backend)), layer.to(device_for(backend)), isa=isa).cpu()


def _reference(conv, x, w, layer):
    """The same layer through torch's float64 convolution (exact for these integers) and the rescaling."""
    acc = conv(x.permute(0, 3, 1, 2).double(), w.double()) + layer.bias.double()[None, :, None, None]
    return requantize(acc.permute(0, 2, 3, 1).long(), layer.mult, layer.shift, layer.lo, layer.hi, layer.out_dtype)


@pytest.mark.parametrize("name, plan, transposed, conv", PLANS, ids=[p[0] for p in PLANS])
@pytest.mark.parametrize("cin, cout", [(1, 1), (7, 19), (32, 70)])
def test_plan_equals_the_torch_convolution(name, plan, transposed, conv, cin, cout):
    g = torch.Generator().manual_seed(0)
    layer, w = _layer(plan, transposed, cin, cout, g)
    x = _input(2, 5, 6, cin, g)
    want = _reference(conv, x, w, layer)
    got = _run("torch", x, layer)
    assert got.dtype == torch.int16 and got.shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("parity, input_parity", [(1, 0), (0, 1), (0, None), (1, None)])
@pytest.mark.parametrize("kernel", [1, 5])
def test_checkerboard_plan(parity, input_parity, kernel):
    """Only the outputs of one parity (zero elsewhere), from only the inputs of the other: the dense
    convolution of the input masked to those inputs, at those outputs."""
    g = torch.Generator().manual_seed(1)
    plan = conv_plan(kernel, kernel // 2, parity, input_parity)
    layer, w = _layer(plan, False, 9, 11, g, out_dtype=torch.int32)
    x = _input(2, 7, 8, 9, g)
    if input_parity is not None:
        x = x * (checkerboard(7, 8)[0, 0] == (input_parity == 0))[None, :, :, None]
    dense = _reference(lambda a, b: F.conv2d(a, b, padding=kernel // 2), x, w, layer)
    keep = (checkerboard(7, 8)[0, 0] == (parity == 0))[None, :, :, None]
    want = torch.where(keep, dense, 0)
    assert torch.equal(_run("torch", x, layer), want)


def _isa_params():
    if not CPU_BUILT:
        return [pytest.param(None, marks=pytest.mark.skip(reason=fastae.ops.available_backends()["cpu"][1]))]
    params = []
    for isa in ic.ISAS:
        ok = True
        try:
            _run("cpu", torch.zeros(1, 1, 1, 2, dtype=torch.int16),
                 IntConvLayer.make(torch.zeros(1, 2, 1, 1, dtype=torch.int8), torch.zeros(1, dtype=torch.int32),
                                   torch.ones(2, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32), conv_plan(1),
                                   0, 0), isa=isa)
        except RuntimeError:
            ok = False
        params.append(pytest.param(isa, marks=pytest.mark.skipif(not ok, reason=f"this CPU has no {isa}")))
    return params


# 10,000 random input positions per layer kind (the shapes of the codec's entropy networks, fewer channels).
CASES = [
    ("hs_deconv", conv_transpose_plan(5, 2, 2, 1), True, 24, 40, (25, 20, 20)),
    ("hs_conv3", conv_plan(3, 1), False, 40, 36, (16, 25, 25)),
    ("ctx_5x5", conv_plan(5, 2, 1, 0), False, 32, 32, (4, 50, 50)),
    ("params_1x1", conv_plan(1, 0, 0), False, 48, 32, (4, 50, 50)),
]


def _case(case, seed):
    name, plan, transposed, cin, cout, (n, h, w) = case
    g = torch.Generator().manual_seed(seed)
    layer, _ = _layer(plan, transposed, cin, cout, g, out_dtype=torch.int16 if seed % 2 else torch.int32)
    x = _input(n, h, w, cin, g)
    x[0, 0, 0] = 3000  # the extremes of the range
    x[-1, -1, -1] = -3000
    return x, layer


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("isa", _isa_params())
def test_cpu_builds_equal_the_oracle_bit_for_bit(case, isa):
    x, layer = _case(case, 2)
    want = _run("torch", x, layer)
    assert torch.equal(_run("cpu", x, layer, isa=isa), want)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", backend_params(["triton", "cuda"]))
def test_gpu_backends_equal_the_oracle_bit_for_bit(case, backend):
    x, layer = _case(case, 3)
    assert torch.equal(_run(backend, x, layer), _run("torch", x, layer))


@pytest.mark.skipif(not CPU_BUILT, reason="no C++ backend")
def test_thread_count_does_not_matter():
    x, layer = _case(CASES[0], 4)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(_run("cpu", x, layer))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("backend", backend_params())
def test_the_largest_accumulators_are_exact(backend):
    """Weights at +-127 and activations at the bound that keeps sum |x| |w| + |bias| just below 2^31."""
    plan = conv_plan(3, 1)
    cin, cout = 128, 16
    w = torch.full((cout, cin, 3, 3), 127, dtype=torch.int8)
    w[::2] = -127
    bias = 1000
    act = (ic.ACC_LIMIT - 1 - bias) // (127 * cin * 9)
    layer = IntConvLayer.make(w, torch.full((cout,), bias, dtype=torch.int32),
                              torch.full((2, cout), (1 << 21) - 1, dtype=torch.int32),
                              torch.full((cout,), 40, dtype=torch.int32), plan, -(1 << 31), (1 << 31) - 1, torch.int32)
    x = torch.full((2, 4, 4, cin), act, dtype=torch.int16)
    x[1] = -act
    want = _reference(lambda a, b: F.conv2d(a, b, padding=1), x, w, layer)
    acc = act * 127 * cin * 9 + bias
    assert acc < ic.ACC_LIMIT and acc > ic.ACC_LIMIT - 127 * cin * 9 - bias  # as large as it may be
    assert torch.equal(_run(backend, x, layer), want)


def test_requantize_rounds_half_up_and_clips():
    acc = torch.tensor([[3], [-3], [5], [-5], [1000], [-1000], [7]])
    mult = torch.tensor([[1], [1]], dtype=torch.int32)
    shift = torch.tensor([1], dtype=torch.int32)
    # 1.5 -> 2, -1.5 -> -1, 2.5 -> 3, -2.5 -> -2, clipped to [-100, 100]
    assert requantize(acc, mult, shift, -100, 100, torch.int32).flatten().tolist() == [2, -1, 3, -2, 100, -100, 4]
    leaky = torch.tensor([[4], [1]], dtype=torch.int32)  # x 2 above zero, x 0.5 below: (v * m + 1) >> 1
    assert requantize(acc, leaky, shift, -100, 100, torch.int32).flatten().tolist() == [6, -1, 10, -2, 100, -100, 14]


@pytest.mark.skipif(not CPU_BUILT, reason="fastae._C is not built")
@pytest.mark.parametrize("acc_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("out_dtype", [torch.int16, torch.int32, torch.int64])
def test_native_rescale_is_the_torch_requantize(acc_dtype, out_dtype):
    """fastae._C's int_requantize gives requantize's integers: random and extreme accumulators
    (int32's ends; int64 ones whose products wrap), both multipliers, every shift, a permuted
    (non-contiguous) input, clips inside and at the ends of out_dtype."""
    g = torch.Generator().manual_seed(11)
    C = 37
    info = torch.iinfo(acc_dtype)
    span = 1 << 31 if acc_dtype == torch.int32 else 1 << 45
    acc = torch.randint(-span, span, (5, 4, 6, C), generator=g, dtype=torch.int64)
    acc[0, 0, 0], acc[0, 0, 1] = info.min, info.max
    acc[1, :2] = torch.randint(-3, 4, (2, 6, C), generator=g)  # ties of the rounding
    acc = acc.clamp(info.min, info.max).to(acc_dtype)
    mult = torch.stack([torch.randint(0, 1 << 21, (C,), generator=g), torch.randint(0, 1 << 21, (C,), generator=g)])
    mult[:, 0] = (1 << 21) - 1
    shift = torch.randint(1, 41, (C,), generator=g)
    shift[:2] = torch.tensor([1, 40])
    out_info = torch.iinfo(out_dtype)
    for lo, hi in ((-16383, 16383), (-5, 77), (out_info.min, out_info.max)):
        for a, m in ((acc, mult.int()), (acc.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3), mult.int()),
                     (acc, torch.stack([mult[0], mult[0]]).int())):
            want = requantize(a, m, shift.int(), lo, hi, out_dtype)
            got = torch.ops.fastae_C.int_requantize(a, m, shift.int(), lo, hi, out_dtype)
            assert got.dtype == out_dtype and torch.equal(got, want)
            assert torch.equal(ic.rescale(a, m, shift.int(), lo, hi, out_dtype), want)
    with pytest.raises(RuntimeError, match=r"expected int32 mult \[2, 37\] and shift \[37\]"):
        torch.ops.fastae_C.int_requantize(acc, mult.int()[:, :3], shift.int(), 0, 1, out_dtype)


@pytest.mark.skipif(not CPU_BUILT, reason="fastae._C is not built")
def test_native_add_clamp_is_the_int64_sum_clamped():
    g = torch.Generator().manual_seed(12)
    a = torch.randint(-(1 << 31), 1 << 31, (3, 50, 7), generator=g, dtype=torch.int64).int()
    b = torch.randint(-(1 << 31), 1 << 31, (3, 50, 7), generator=g, dtype=torch.int64).int()
    a[0, 0, :3] = torch.tensor([2**31 - 1, -2**31, 5], dtype=torch.int32)
    b[0, 0, :3] = torch.tensor([2**31 - 1, -2**31, -5], dtype=torch.int32)
    for limit in (2**31 - 1, 1000, 0):
        want = (a.long() + b.long()).clamp(-limit, limit).int()
        assert torch.equal(torch.ops.fastae_C.int_add_clamp(a, b, limit), want)
        assert torch.equal(ic.add_clamp(a, b, limit), want)
        assert torch.equal(ic.add_clamp(a.transpose(1, 2), b.transpose(1, 2), limit), want.transpose(1, 2))
    with pytest.raises(RuntimeError, match="expected two int32 tensors of one shape"):
        torch.ops.fastae_C.int_add_clamp(a, b[:, :3], 5)


def test_unsafe_inputs_are_refused():
    g = torch.Generator().manual_seed(5)
    layer, _ = _layer(conv_plan(3, 1), False, 8, 4, g)
    x = torch.zeros(1, 2, 2, 8, dtype=torch.int16)
    x[0, 1, 1, 3] = -16385
    with pytest.raises(ValueError, match=r"activations must lie in \[-16384, 16383\], got \[-16385, 0\]"):
        int_conv2d(x, layer)
    big = IntConvLayer.make(torch.full((4, 128, 3, 3), 127, dtype=torch.int8), torch.full((4,), -7, dtype=torch.int32),
                            torch.ones(2, 4, dtype=torch.int32), torch.ones(4, dtype=torch.int32), conv_plan(3, 1),
                            -100, 100)
    bound = 16383 * 127 * 128 * 9 + 7
    with pytest.raises(ValueError, match=rf"an accumulator could reach {bound} >= 2\^31"):
        int_conv2d(torch.full((1, 2, 2, 128), 16383, dtype=torch.int16), big)
    with pytest.raises(ValueError, match=rf"an accumulator could reach {bound} >= 2\^31"):  # the caller's bound
        int_conv2d(torch.zeros(1, 2, 2, 128, dtype=torch.int16), big, x_max=16383)
    with pytest.raises(ValueError, match=r"x_max must lie in \[0, 16383\], got 20000"):
        int_conv2d(torch.zeros(1, 2, 2, 8, dtype=torch.int16), layer, x_max=20000)
    with pytest.raises(ValueError, match=r"unknown isa 'sse9'"):
        int_conv2d(torch.zeros(1, 2, 2, 8, dtype=torch.int16), layer, isa="sse9")
    with pytest.raises(TypeError, match=r"expected x int16 \[N, H, W, 8\]"):
        int_conv2d(torch.zeros(1, 2, 2, 8, dtype=torch.int32), layer)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"w": torch.zeros(4, 8, 3, 3, dtype=torch.int16)}, TypeError, r"expected an int8 weight \[\.\., \.\., 3, 3\]"),
        ({"w": torch.full((4, 8, 3, 3), -128, dtype=torch.int8)}, ValueError, r"weights must lie in \[-127, 127\]"),
        ({"bias": torch.zeros(5, dtype=torch.int32)}, TypeError, r"expected bias int32 \[4\], got torch.int32 \[5\]"),
        ({"mult": torch.full((2, 4), 1 << 21, dtype=torch.int32)}, ValueError, r"multipliers in \[0, 2\^21\)"),
        ({"shift": torch.zeros(4, dtype=torch.int32)}, ValueError, r"shifts in \[1, 40\]"),
        ({"lo": -40000}, ValueError, r"expected -32768 <= lo <= hi <= 32767 for torch.int16, got lo=-40000"),
        ({"out_dtype": torch.int64}, TypeError, r"out_dtype must be torch.int16 or torch.int32"),
    ],
)
def test_bad_layers_are_named(kwargs, error, message):
    args = {"w": torch.zeros(4, 8, 3, 3, dtype=torch.int8), "bias": torch.zeros(4, dtype=torch.int32),
            "mult": torch.ones(2, 4, dtype=torch.int32), "shift": torch.ones(4, dtype=torch.int32), "lo": -10,
            "hi": 10, "out_dtype": torch.int16} | kwargs
    with pytest.raises(error, match=message):
        IntConvLayer.make(args["w"], args["bias"], args["mult"], args["shift"], conv_plan(3, 1), args["lo"],
                          args["hi"], args["out_dtype"])


@pytest.mark.parametrize("backend", backend_params())
def test_opcheck(backend):
    device = device_for(backend)
    g = torch.Generator().manual_seed(6)
    layer, _ = _layer(conv_transpose_plan(5, 2, 2, 1), True, 6, 5, g)
    layer = layer.to(device)
    x = F.pad(_input(1, 3, 4, 6, g), (0, 0, 1, 2, 1, 2)).to(device).contiguous()
    taps = [v for _, _, dy, dx in layer.plan.taps for v in (dy + 1, dx + 1)]
    phases = [v for p in layer.plan.phases for v in p]
    torch.library.opcheck(torch.ops.fastae.int_conv, (x, layer.weight, layer.bias, layer.mult, layer.shift, taps,
                                                      phases, 1, 2, 6, 8, layer.lo, layer.hi, torch.int16, backend,
                                                      -1))
