"""The ``ops`` suite: ``linear_act`` forward and forward+backward per fastae backend x activation
x dtype x autoencoder layer (batch 256 / 4096 / 65536 x 784->128, 128->64, 64->128, 128->784),
beside eager ``act(F.linear(...))``, its ``torch.compile`` and ``torch._addmm_activation`` where
that computes the same function (forward only; relu, and gelu on the CPU / gelu_tanh on CUDA)."""

import torch
import torch.nn.functional as F

import fastae
from fastae.bench.cases import DTYPES, Case, Lazy, Prepared, compiled, fastae_backends, ratio_target

LAYERS = ((784, 128), (128, 64), (64, 128), (128, 784))

EAGER_ACT = {
    "none": lambda y: y,
    "relu": F.relu,
    "leaky_relu": lambda y: F.leaky_relu(y, 0.01),
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
}


def ops_cases(device, dtypes, activations, quick, compile_on, notes) -> list:
    device = torch.device(device)
    cuda = device.type == "cuda"
    fastae_impls = fastae_backends(device, notes)
    if quick:
        batches, layers = ([256, 4096], [(784, 128), (128, 784)]) if not cuda else ([4096], LAYERS)
    else:
        batches, layers = [256, 4096, 65536], LAYERS
    cases = []
    for mode in ("fwd", "fwd+bwd"):
        for act in activations:
            for dtype in dtypes:
                for batch in batches:
                    for in_f, out_f in layers:
                        addmm = mode == "fwd" and (act == "relu" or act == ("gelu_tanh" if cuda else "gelu"))
                        impls = ([i for i, _ in fastae_impls] + ["eager"] + (["compile"] if compile_on else [])
                                 + (["addmm_activation"] if addmm else []))
                        target = None
                        if cuda and mode == "fwd+bwd" and batch >= 4096:
                            target = ratio_target("≥1.25x eager, ≥1.0x compile", eager=1.25, compile=1.0)
                        cases.append(Case(
                            "ops", f"linear_act {act} {mode} {batch}x{in_f}->{out_f} {dtype}", tuple(impls),
                            _ops_setup(device, dict(fastae_impls), mode, act, DTYPES[dtype], batch, in_f, out_f),
                            dtype=dtype, flops=2 * batch * in_f * out_f * (1 if mode == "fwd" else 3), target=target))
    return cases


def _ops_setup(device, backends, mode, act, dtype, batch, in_f, out_f):
    def setup():
        g = torch.Generator(device="cpu").manual_seed(0)
        bwd = mode != "fwd"
        x = torch.randn(batch, in_f, generator=g).to(device, dtype).requires_grad_(bwd)
        w = (torch.randn(out_f, in_f, generator=g) * in_f**-0.5).to(device, dtype).requires_grad_(bwd)
        b = (torch.randn(out_f, generator=g) * 0.1).to(device, dtype).requires_grad_(bwd)
        grad = torch.randn(batch, out_f, generator=g).to(device, dtype)
        act_fn = EAGER_ACT[act]

        def eager(x, w, b):
            return act_fn(F.linear(x, w, b))

        def step_of(fn):
            if not bwd:
                def step():
                    with torch.no_grad():
                        fn(x, w, b)
            else:
                def step():
                    x.grad = w.grad = b.grad = None
                    fn(x, w, b).backward(grad)
            return step

        def fused(name):
            def fn(x, w, b):
                with fastae.ops.backend(name):
                    return fastae.ops.linear_act(x, w, b, act)
            return fn

        impls = {impl: step_of(fused(name)) for impl, name in backends.items()}
        impls["eager"] = step_of(eager)
        impls["compile"] = Lazy(lambda: step_of(compiled(eager, fullgraph=True)))
        impls["addmm_activation"] = step_of(
            lambda x, w, b: torch._addmm_activation(b, x, w.t(), use_gelu=act.startswith("gelu")))
        return Prepared(impls, (x, w, b))

    return setup
