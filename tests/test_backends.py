"""Backend selection, availability reasons, and a missing or mismatched fastae._C."""

import re
import subprocess
import sys

import pytest
import torch

import fastae
from fastae.ops import _backend


def test_available_backends_reports_every_backend_with_a_reason():
    available = fastae.ops.available_backends()
    assert tuple(available) == fastae.ops.BACKENDS
    for ok, reason in available.values():
        assert isinstance(ok, bool) and reason
    assert available["torch"][0]


def test_backend_context_forces_and_restores():
    assert fastae.ops.current_backend() == "auto"
    with fastae.ops.backend("torch"):
        assert fastae.ops.current_backend() == "torch"
        assert _backend.resolve(torch.device("cpu")) == "torch"
    assert fastae.ops.current_backend() == "auto"


def test_auto_prefers_the_cpp_kernels_on_cpu():
    expected = "cpu" if fastae.ops.available_backends()["cpu"][0] else "torch"
    assert _backend.resolve(torch.device("cpu")) == expected


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match=r"unknown fastae backend 'tpu'; expected one of \('auto', 'triton'"):
        with fastae.ops.backend("tpu"):
            pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_backend_says_why():
    reason = fastae.ops.available_backends()["cuda"][1]
    with pytest.raises(RuntimeError, match=re.escape(f"fastae backend 'cuda' is not available: {reason}")):
        with fastae.ops.backend("cuda"):
            pass


@pytest.mark.skipif(not fastae.ops.available_backends()["triton"][0], reason="triton unavailable")
def test_triton_with_cpu_tensors_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "triton_interpret", lambda: False)
    with fastae.ops.backend("triton"):
        with pytest.raises(ValueError, match=r"'triton' cannot run on cpu tensors \(or set TRITON_INTERPRET=1"):
            fastae.ops.linear_act(torch.ones(2, 3), torch.ones(4, 3))


def _run_isolated(prelude):
    """Import fastae in a fresh interpreter after `prelude`; return (cpu status, linear_act works)."""
    code = prelude + (
        "\nimport torch, fastae\n"
        "ok, why = fastae.ops.available_backends()['cpu']\n"
        "y = fastae.ops.linear_act(torch.ones(2, 3), torch.ones(4, 3), None, 'relu')\n"
        "print(ok); print(why); print(y.sum().item())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    ok, why, total = out.strip().splitlines()[-3:]
    return ok == "True", why, float(total)


def test_missing_extension_leaves_torch_backend_working():
    ok, why, total = _run_isolated(
        "import sys; sys.modules['fastae._build_info'] = None  # as if never built")
    assert not ok and "fastae._C was not built" in why
    assert total == 24.0


def test_extension_built_for_another_torch_is_not_loaded():
    ok, why, total = _run_isolated(
        "import sys, types\n"
        "m = types.ModuleType('fastae._build_info')\n"
        "m.BUILD_INFO = {'fastae': '0', 'torch': '1.13.1', 'cuda': None, 'cuda_arch_list': None, 'cxx11_abi': True}\n"
        "sys.modules['fastae._build_info'] = m\n")
    assert not ok and "fastae._C was built for torch 1.13.1 but torch" in why and "rebuild" in why
    assert total == 24.0
