"""Benchmarks of the integer entropy networks' convolutions (fastae.ops.int_conv2d) beside torch's
float64 convolutions (what the codec runs its entropy networks in today) and float32 ones, at the
shapes of a Kodak image (768x512: hyper-latents 8x12, latents 32x48), and of the whole networks of
the shipped model (its h_s, and its checkerboard context's two passes) in float64 and in integers.

    pytest bench/test_int_conv.py --benchmark-only --benchmark-group-by=group
    OMP_NUM_THREADS=1 pytest bench/test_int_conv.py --benchmark-only --benchmark-group-by=group \\
        --benchmark-timer=time.thread_time      # one thread's CPU time: steady on a shared machine

Each group is one layer (or network); the int rows name the CPU build (avx512, avx2, baseline).
"checkerboard" rows are what the integer context runs: the 5x5 for the second pass's half of the
positions from the anchors only (12 of 25 taps).
"""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.ops import int_conv as ic
from fastae.ops.int_conv import IntConvLayer, conv_plan, conv_transpose_plan, int_conv2d

# (name, Cin, Cout, input H, W, plan, transposed, torch convolution)
LAYERS = [
    ("h_s deconv 96->160", 96, 160, 8, 12, conv_transpose_plan(5, 2, 2, 1), True,
     lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=2, output_padding=1)),
    ("h_s deconv 160->240", 160, 240, 16, 24, conv_transpose_plan(5, 2, 2, 1), True,
     lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=2, output_padding=1)),
    ("h_s conv3 240->320", 240, 320, 32, 48, conv_plan(3, 1), False, lambda x, w: F.conv2d(x, w, padding=1)),
    ("context 5x5 M=160", 160, 160, 32, 48, conv_plan(5, 2), False, lambda x, w: F.conv2d(x, w, padding=2)),
    ("context 5x5 M=320", 320, 320, 32, 48, conv_plan(5, 2), False, lambda x, w: F.conv2d(x, w, padding=2)),
    ("context 1x1 480->320", 480, 320, 32, 48, conv_plan(1), False, lambda x, w: F.conv2d(x, w)),
    ("context 1x1 320->320", 320, 320, 32, 48, conv_plan(1), False, lambda x, w: F.conv2d(x, w)),
]
CHECKERBOARD = {"context 5x5 M=160": conv_plan(5, 2, 1, 0), "context 5x5 M=320": conv_plan(5, 2, 1, 0)}


def _isas():
    """The C++ builds this CPU runs."""
    out = []
    for isa in ic.ISAS:
        layer = IntConvLayer.make(torch.zeros(1, 2, 1, 1, dtype=torch.int8), torch.zeros(1, dtype=torch.int32),
                                  torch.ones(2, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32), conv_plan(1),
                                  0, 0)
        try:
            with fastae.ops.backend("cpu"):
                int_conv2d(torch.zeros(1, 1, 1, 2, dtype=torch.int16), layer, isa=isa)
            out.append(isa)
        except (RuntimeError, ValueError):
            pass
    return out


IMPLS = ["float64", "float32"] + ([f"int-{isa}" for isa in _isas()] if fastae.ops.available_backends()["cpu"][0]
                                  else [])


@pytest.mark.parametrize("impl", IMPLS + [f"{i}-checkerboard" for i in IMPLS if i.startswith("int")])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_layer(benchmark, impl, layer):
    name, cin, cout, h, w, plan, transposed, conv = layer
    if impl.endswith("-checkerboard"):
        if name not in CHECKERBOARD:
            pytest.skip("a checkerboard plan only for the context's 5x5")
        plan = CHECKERBOARD[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2000, 2001, (1, h, w, cin), generator=g, dtype=torch.int16)
    k = plan.kernel
    weight = torch.randint(-127, 128, (cin, cout, k, k) if transposed else (cout, cin, k, k), generator=g,
                           dtype=torch.int8)
    if impl.startswith("float"):
        dtype = torch.float64 if impl == "float64" else torch.float32
        xf, wf = x.permute(0, 3, 1, 2).to(dtype).contiguous(), weight.to(dtype)

        def step():
            conv(xf, wf)
    else:
        layer_int = IntConvLayer.make(weight, torch.zeros(cout, dtype=torch.int32),
                                      torch.full((2, cout), 1 << 10, dtype=torch.int32),
                                      torch.full((cout,), 20, dtype=torch.int32), plan, ic.ACT_MIN, ic.ACT_MAX)
        isa = impl.split("-")[1]

        def step():
            with fastae.ops.backend("cpu"):
                int_conv2d(x, layer_int, isa=isa)

    step()
    benchmark.group = f"layer {name}"
    benchmark.pedantic(step, rounds=10, iterations=1)


@pytest.fixture(scope="module")
def shipped():
    """The shipped model's float64 entropy networks (as the codec runs them) and integer ones
    calibrated on random hyper-latents (enough for timing), and a Kodak-sized input."""
    from fastae.codec.image import WEIGHTS_DIR, _read_model_file
    from fastae.codec import DEFAULT_MODEL
    from fastae.nn.integer import IntegerCheckerboardContext, IntegerHyperSynthesis

    loaded = _read_model_file(WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors", "cpu")
    model = loaded.model.to(memory_format=torch.contiguous_format)
    g = torch.Generator().manual_seed(0)
    z = torch.round(torch.randn(1, model.N, 8, 12, generator=g) * 4)
    with torch.no_grad():
        hyper = model.h_s(z)
        anchors = torch.round(torch.randn(1, model.M, 32, 48, generator=g) * 5)
    hs = IntegerHyperSynthesis.from_float(model.h_s, [z])
    ctx = IntegerCheckerboardContext.from_float(model.ctx, [hyper], [anchors])
    return loaded, hs, ctx, z.int(), anchors.int()


@pytest.mark.parametrize("impl", ["float64", "integer"])
@pytest.mark.parametrize("network", ["h_s", "context two passes"])
def test_network(benchmark, shipped, impl, network):
    loaded, hs, ctx, z, values = shipped
    with torch.no_grad():
        hyper = loaded.h_s64(z.double()) if impl == "float64" else hs.forward_int(z)
    if network == "h_s":
        step = (lambda: loaded.h_s64(z.double())) if impl == "float64" else (lambda: hs.forward_int(z))
    elif impl == "float64":
        def step():
            loaded.ctx64.two_pass(hyper, lambda m, s: values.double())
    else:
        def step():
            ctx.two_pass_int(hyper, lambda m, s: values)
    with torch.no_grad():
        step()
        benchmark.group = f"network {network} (Kodak 768x512)"
        benchmark.pedantic(step, rounds=10, iterations=1)
