"""The fastae command line."""

import re
import subprocess
import sys

import torch

import fastae
from fastae import cli
from fastae.ops import linear as ops_linear


def test_info_names_versions_build_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"fastae     {fastae.__version__}" in out and torch.__version__ in out
    for name, (ok, reason) in fastae.ops.available_backends().items():
        assert f"{name:<7}{'yes' if ok else 'no':<5}{reason}" in out


def test_info_check_passes_on_this_install(capsys):
    assert cli.main(["info", "--check"]) == 0
    out = capsys.readouterr().out
    assert "self-check: all passed" in out
    for name, (ok, _) in fastae.ops.available_backends().items():
        if ok and name != "torch":
            for op in ("linear_act", "recon_loss", "gaussian_kl", "linear_bce"):
                assert re.search(rf"{op}\s+{name}\s+float32", out)


def test_info_check_fails_on_a_wrong_backend(capsys, monkeypatch):
    def wrong(x, weight, bias, act, save_preact):
        out, pre = ops_linear._torch_fwd(x, weight, bias, act, save_preact)
        return out + 0.5, pre

    monkeypatch.setitem(ops_linear._FWD, "cpu", wrong)
    assert cli.main(["info", "--check"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "fastae.cli", "info"], capture_output=True, text=True, check=True)
    assert "backends:" in out.stdout
