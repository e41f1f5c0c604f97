"""resolve_device: every --device / device= argument is checked once, with a message instead of a traceback."""

import pytest
import torch

from fastae import cli
from fastae._device import resolve_device
from fastae.codec.api import load_codec

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


def test_auto_and_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("device, message", [
    ("tpu", r"x: 'tpu' is not a device \(expected auto, cpu, cuda or cuda:N\)"),
    ("meta", "'meta' tensors hold no data"),
    (3.5, "is not a device"),
])
def test_bad_devices_are_named(device, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(device, "x")


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_a_gpu(device):
    with pytest.raises(ValueError, match=r"is not available here: torch .* sees no CUDA device"):
        resolve_device(device, "x")
    with pytest.raises(ValueError, match="load_codec: device: .*is not available here"):
        load_codec(device=device)


@pytest.mark.cuda
def test_cuda_index_beyond_the_machine():
    count = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=f"this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


@no_cuda
@pytest.mark.parametrize("argv", [["compress", "{tmp}", "{tmp}/out", "--device", "cuda"],
                                  ["decompress", "{tmp}", "{tmp}/out", "--device", "cuda"],
                                  ["bench", "--device", "cuda", "--quick", "--no-progress"]])
def test_cli_reports_an_unavailable_device(tmp_path, capsys, argv):
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "--device: 'cuda' is not available here" in err and "Traceback" not in err
