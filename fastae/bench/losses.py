"""The ``losses`` suite: ``reconstruction_loss`` (every kind) and ``gaussian_kl`` forward+backward
at 1M-64M elements, ``linear_bce_loss`` (128->784) at 3M-51M logits, and their peak memory
(CUDA: allocated in-process; CPU: growth of the resident set, a fresh process per row)."""

import gc
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import fastae
from fastae.bench.cases import Case, Lazy, Prepared, backend_call, compiled, fastae_backends, ratio_target

LOSS_KINDS = ("mse", "l1", "bce", "bce_logits")

_EAGER_LOSS = {"mse": F.mse_loss, "l1": F.l1_loss, "bce": F.binary_cross_entropy,
               "bce_logits": F.binary_cross_entropy_with_logits}


def _kl_eager(mu, logvar):
    return -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum() / mu.shape[0]


def _linear_bce_eager(h, w, b, t):
    return F.binary_cross_entropy_with_logits(F.linear(h, w, b), t)


def losses_cases(device, quick, compile_on, notes) -> list:
    device = torch.device(device)
    cuda = device.type == "cuda"
    fastae_impls = fastae_backends(device, notes)
    backends = dict(fastae_impls)
    base = ["eager"] + (["compile"] if compile_on else [])
    impls = tuple([i for i, _ in fastae_impls] + base)
    sizes = [(1024, 1024)] if quick else [(1024, 1024), (16384, 1024), (65536, 1024)]
    bce_batches = [4096] if quick else [4096, 16384, 65536]
    memory = "cuda" if cuda else (None if quick else "rss")
    if not cuda and quick:
        notes.add("losses: peak memory not measured in --quick on the CPU (it takes a fresh process per row)")
    target = ratio_target("≥2x eager, ≥85% of copy GB/s", eager=2.0, frac=0.85) if cuda else None
    cases = []
    for rows, cols in sizes:
        n = rows * cols
        for kind in LOSS_KINDS:
            cases.append(Case("losses", f"reconstruction_loss {kind} fwd+bwd {rows}x{cols} float32", impls,
                              _recon_setup(device, backends, kind, rows, cols), dtype="float32", bytes=3 * n * 4,
                              target=target, memory="cuda" if cuda else None))
        cases.append(Case("losses", f"gaussian_kl fwd+bwd {rows}x{cols} float32", impls,
                          _kl_setup(device, backends, rows, cols), dtype="float32", bytes=4 * n * 4,
                          target=target, memory="cuda" if cuda else None))
    bce_target = ratio_target("≥2x eager (matmul-bound: no bandwidth goal)", eager=2.0) if cuda else None
    for batch in bce_batches:
        hidden, out = 128, 784
        rss_impls = tuple(i for i in impls if i != "compile")  # a fresh process would compile from scratch
        cases.append(Case("losses", f"linear_bce_loss fwd+bwd {batch}x{hidden}->{out} float32", impls,
                          _linear_bce_setup(device, backends, batch, hidden, out), dtype="float32",
                          flops=3 * 2 * batch * hidden * out,
                          target=bce_target,
                          memory=memory, memory_spec={"batch": batch, "impls": rss_impls}))
    if memory == "rss":
        notes.add("losses: CPU peak memory is measured for linear_bce_loss only (a fresh process per row, after a "
                  "small warm-up call: growth of the peak resident set above the inputs), not for compile")
    return cases


def _loss_step(fn, inputs):
    def step():
        for t in inputs:
            t.grad = None
        fn().backward()
    return step


def _recon_setup(device, backends, kind, rows, cols):
    def setup():
        g = torch.Generator(device="cpu").manual_seed(0)
        if kind == "bce":
            x = torch.rand(rows, cols, generator=g).clamp_(1e-3, 1 - 1e-3)
        else:
            x = torch.randn(rows, cols, generator=g)
        x = x.to(device).requires_grad_()
        t = torch.rand(rows, cols, generator=g).to(device)
        eager = _EAGER_LOSS[kind]
        impls = {impl: _loss_step(backend_call(name, lambda: fastae.ops.reconstruction_loss(x, t, kind)), (x,))
                 for impl, name in backends.items()}
        impls["eager"] = _loss_step(lambda: eager(x, t), (x,))

        def compiled_step():
            fn = compiled(eager, fullgraph=True)
            return _loss_step(lambda: fn(x, t), (x,))

        impls["compile"] = Lazy(compiled_step)
        return Prepared(impls, (x,))

    return setup


def _kl_setup(device, backends, rows, cols):
    def setup():
        g = torch.Generator(device="cpu").manual_seed(0)
        mu = torch.randn(rows, cols, generator=g).to(device).requires_grad_()
        logvar = (torch.randn(rows, cols, generator=g) * 0.5).to(device).requires_grad_()
        impls = {impl: _loss_step(backend_call(name, lambda: fastae.ops.gaussian_kl(mu, logvar)), (mu, logvar))
                 for impl, name in backends.items()}
        impls["eager"] = _loss_step(lambda: _kl_eager(mu, logvar), (mu, logvar))

        def compiled_step():
            fn = compiled(_kl_eager, fullgraph=True)
            return _loss_step(lambda: fn(mu, logvar), (mu, logvar))

        impls["compile"] = Lazy(compiled_step)
        return Prepared(impls, (mu, logvar))

    return setup


def _linear_bce_tensors(device, batch, hidden, out):
    g = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(batch, hidden, generator=g).to(device).requires_grad_()
    w = (torch.randn(out, hidden, generator=g) * hidden**-0.5).to(device).requires_grad_()
    b = torch.zeros(out, device=device, requires_grad=True)
    t = (torch.rand(batch, out, generator=g) > 0.5).float().to(device)
    return h, w, b, t


def _linear_bce_setup(device, backends, batch, hidden, out):
    def setup():
        h, w, b, t = _linear_bce_tensors(device, batch, hidden, out)
        impls = {impl: _loss_step(backend_call(name, lambda: fastae.ops.linear_bce_loss(h, w, b, t)), (h, w, b))
                 for impl, name in backends.items()}
        impls["eager"] = _loss_step(lambda: _linear_bce_eager(h, w, b, t), (h, w, b))

        def compiled_step():
            fn = compiled(_linear_bce_eager, fullgraph=True)
            return _loss_step(lambda: fn(h, w, b, t), (h, w, b))

        impls["compile"] = Lazy(compiled_step)
        return Prepared(impls, (h, w, b))

    return setup


def _proc_status_kb(field_name):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def rss_peak_child(batch, impl):
    """Run in a fresh process: growth of the resident set over one linear_bce_loss fwd+bwd above
    the inputs (``impl``: eager or fastae-<backend>); prints bytes. Linux resets the high-water
    mark (writing 5 to /proc/self/clear_refs) once the inputs exist; elsewhere the growth of the
    process's peak above its peak before the inputs, less their size."""
    import resource

    def step(h, w, b, t):
        if impl == "eager":
            _linear_bce_eager(h, w, b, t).backward()
        else:
            with fastae.ops.backend(impl.removeprefix("fastae-")):
                fastae.ops.linear_bce_loss(h, w, b, t).backward()

    step(*_linear_bce_tensors("cpu", 8, 128, 784))  # first-call set-up (libraries, thread pools) is not the op's
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    h, w, b, t = _linear_bce_tensors("cpu", batch, 128, 784)
    inputs = sum(v.numel() * v.element_size() for v in (h, w, b, t))
    try:
        gc.collect()
        base = _proc_status_kb("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm = lambda: _proc_status_kb("VmHWM") * 1024  # noqa: E731
    except OSError:
        base = before + inputs
        hwm = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731
    step(h, w, b, t)
    print(hwm() - base)


def rss_peak(batch, impl) -> int:
    """Bytes: ``rss_peak_child`` in a fresh Python process."""
    code = f"from fastae.bench import losses; losses.rss_peak_child({int(batch)}, {impl!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return int(out.stdout.split()[-1])
