"""fastae.train.fit: learning, determinism, checkpoints, resume, divergence, DDP."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import Dataset

from fastae.data import load_mnist, train_val_split
from fastae.models import AdversarialAutoencoder, DenoisingAutoencoder, MLPAutoencoder, SparseAutoencoder
from fastae.train import OPTIMIZERS, fit, load_model
from fastae.train.checkpoint import CONFIG, STATE, WEIGHTS
from tests._util import MNIST


@pytest.fixture(scope="module")
def digits():
    """The 300 real digits of tests/data as [N, 1, 28, 28] floats: 250 to train on, 50 to validate."""
    images, _ = load_mnist(MNIST)
    x = images.float().div(255).unsqueeze(1)
    return x[:250], x[250:]


def small_mlp():
    torch.manual_seed(0)
    return MLPAutoencoder(hidden=[64], latent=16)


def test_learns_real_digits(digits):
    train, val = digits
    history = fit(small_mlp(), train, val, epochs=4, batch_size=25, progress=False)
    assert history["epoch"] == [1, 2, 3, 4]
    assert history["val_mse"][-1] < 0.6 * history["val_mse"][0]
    assert history["train_loss"][-1] < history["train_loss"][0]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains(digits, optimizer):
    train, val = digits
    lr = {"sgd": 1.0, "momentum": 0.1}.get(optimizer, 1e-3)
    history = fit(small_mlp(), train, val, epochs=2, batch_size=64, optimizer=optimizer, lr=lr, progress=False)
    assert history["val_mse"][-1] < history["val_mse"][0]


def test_deterministic_on_cpu_for_a_seed(digits):
    train, val = digits
    runs = [small_mlp() for _ in range(2)]
    histories = [fit(m, train, val, epochs=2, batch_size=64, seed=3, progress=False) for m in runs]
    assert histories[0]["train_loss"] == histories[1]["train_loss"]
    for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()):
        assert torch.equal(a, b)


def _autograd_only(monkeypatch):
    monkeypatch.setattr(MLPAutoencoder, "_loss_and_grads", lambda self, x: None)


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
@pytest.mark.parametrize("model", [
    lambda: MLPAutoencoder(hidden=[64, 32], latent=16),
    lambda: DenoisingAutoencoder(hidden=[48], latent=8, noise="gaussian", noise_level=0.2),
])
def test_direct_step_gives_autograds_values(digits, model, amp):
    """fit's step without autograd (MLPAutoencoder._loss_and_grads) against loss().backward() on
    the same model and batch, in float32 and under bf16 autocast: the same terms and gradients,
    bit for bit."""
    x = digits[0][:40]
    torch.manual_seed(0)
    a = model()
    b = model()
    b.load_state_dict(a.state_dict())
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        torch.manual_seed(1)
        terms = a._loss_and_grads(x)
        torch.manual_seed(1)
        ref = b.loss(x)
    ref["loss"].backward()
    assert set(terms) == set(ref) and all(torch.equal(terms[k], ref[k].detach()) for k in ref)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_direct_step_declines_what_it_does_not_compute(digits):
    x = digits[0][:8]
    torch.manual_seed(0)
    assert MLPAutoencoder(loss="bce")._loss_and_grads(x) is None
    assert SparseAutoencoder()._loss_and_grads(x) is None
    model = MLPAutoencoder()
    assert model._loss_and_grads(x.double()) is None
    with torch.no_grad():
        assert model._loss_and_grads(x) is None
    model.decoder.layers[-1].bias.requires_grad_(False)
    assert model._loss_and_grads(x) is None
    model.decoder.layers[-1].bias.requires_grad_(True)
    hook = model.encoder.layers[0].weight.register_hook(lambda g: g * 2)
    assert model._loss_and_grads(x) is None
    assert all(p.grad is None for p in model.parameters())
    hook.remove()
    assert model._loss_and_grads(x) is not None


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_fit_with_the_direct_step_trains_as_with_autograd(digits, monkeypatch, amp):
    train, val = digits
    runs = [small_mlp(), small_mlp()]
    taken, real = [], MLPAutoencoder._loss_and_grads
    monkeypatch.setattr(MLPAutoencoder, "_loss_and_grads", lambda self, x: taken.append(real(self, x)) or taken[-1])
    direct = fit(runs[0], train, val, epochs=2, batch_size=64, seed=3, amp=amp, progress=False)
    assert len(taken) == 2 * 3 and all(t is not None for t in taken)  # 250 rows: 3 batches of 64 an epoch
    _autograd_only(monkeypatch)
    autograd = fit(runs[1], train, val, epochs=2, batch_size=64, seed=3, amp=amp, progress=False)
    assert direct["train_loss"] == autograd["train_loss"] and direct["val_mse"] == autograd["val_mse"]
    for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_round_trip_and_resume_equals_one_run(digits, tmp_path):
    train, val = digits
    straight = small_mlp()
    fit(straight, train, val, epochs=3, batch_size=64, progress=False)

    resumed = small_mlp()
    fit(resumed, train, val, epochs=2, batch_size=64, out=tmp_path, progress=False)
    assert {p.name for p in tmp_path.iterdir()} == {WEIGHTS, CONFIG, STATE, "history.json"}
    assert json.loads((tmp_path / CONFIG).read_text())["epoch"] == 2
    loaded = load_model(tmp_path)
    assert torch.equal(loaded(val[:5]), resumed(val[:5]))

    history = fit(small_mlp(), train, val, epochs=3, batch_size=64, out=tmp_path, resume=True, progress=False)
    assert history["epoch"] == [1, 2, 3]
    for a, b in zip(load_model(tmp_path).state_dict().values(), straight.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_with_another_config_is_refused(digits, tmp_path):
    train, _ = digits
    fit(small_mlp(), train, epochs=1, batch_size=64, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"another model config \(hidden: checkpoint \[64\], requested \[32\]"):
        fit(MLPAutoencoder(hidden=[32], latent=16), train, epochs=2, out=tmp_path, resume=True, progress=False)


class PoisonedAfter(Dataset):
    """Real digits, until `after` items have been read: then NaN."""

    def __init__(self, x, after):
        self.x, self.after, self.reads = x, after, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i] * (float("nan") if self.reads > self.after else 1.0)


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    train, _ = digits
    model = small_mlp()
    with pytest.raises(FloatingPointError, match=r"training diverged: .*NaN or inf in epoch 2.*last good checkpoint"):
        # epoch 1 reads 200 digits (two full batches of 100): the NaNs come in epoch 2
        fit(model, PoisonedAfter(train, after=250), epochs=3, batch_size=100, out=tmp_path, progress=False)
    assert json.loads((tmp_path / CONFIG).read_text())["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in load_model(tmp_path).state_dict().values())


def test_adversarial_autoencoder_trains_every_phase(digits):
    train, val = digits
    torch.manual_seed(0)
    model = AdversarialAutoencoder(hidden=[64], latent=4, disc_hidden=[32])
    history = fit(model, train, val, epochs=2, batch_size=100, progress=False)
    assert {"train_loss", "train_disc_loss", "train_gen_loss", "val_mse"} <= set(history)
    assert history["val_mse"][-1] < history["val_mse"][0]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"optimizer": "lbfgs"}, ValueError, r"unknown optimizer 'lbfgs'; expected one of \('sgd', 'momentum'"),
    ({"epochs": -1}, ValueError, r"epochs must be a non-negative int, got -1"),
    ({"amp": "fp8"}, ValueError, r"amp must be 'auto', 'off', 'bf16' or 'fp16', got 'fp8'"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        fit(small_mlp(), torch.rand(8, 784), **kwargs, progress=False)


def test_train_val_split_of_the_t10k_files():
    train, val = train_val_split(10_000, 0.1, seed=0)
    assert len(train) == 9_000 and len(val) == 1_000


_DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from fastae.models import MLPAutoencoder
from fastae.train import fit
torch.manual_seed(0)
model = MLPAutoencoder(hidden=[32], latent=8)
x = torch.rand(256, 784, generator=torch.Generator().manual_seed(1))
history = fit(model, x, x[:64], epochs=2, batch_size=32, out=sys.argv[1], progress=False)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
with open(f"{sys.argv[1]}.rank{dist.get_rank()}", "w") as f:  # a file each: stdout lines interleave
    f.write(f"SAME {all(torch.equal(g, gathered[0]) for g in gathered)} {history['epoch']}")
dist.barrier()
os._exit(0)  # skip interpreter teardown, where gloo's threads sometimes abort; the results are written
"""


@pytest.mark.slow
def test_distributed_data_parallel_on_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(script),
         str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"out.rank{rank}").read_text() == "SAME True [1, 2]"
    assert (tmp_path / "out" / WEIGHTS).exists()


def test_resume_with_another_optimizer_and_load_model_on_a_bad_device(tmp_path):
    from fastae.models import build_model
    from fastae.train import fit, load_model

    torch.manual_seed(0)
    x = torch.rand(20, 1, 8, 8)
    fit(build_model("mlp", input_shape=[1, 8, 8], hidden=[8], latent=2), x, None, epochs=1, out=tmp_path,
        progress=False)
    again = build_model("mlp", input_shape=[1, 8, 8], hidden=[8], latent=2)
    with pytest.raises(ValueError, match="another optimizer .* than SGD: resume it with the --optimizer"):
        fit(again, x, None, epochs=2, out=tmp_path, resume=True, optimizer="sgd", progress=False)
    assert len(fit(again, x, None, epochs=2, out=tmp_path, resume=True, progress=False)["train_loss"]) == 2
    with pytest.raises(ValueError, match="load_model: device: 'gpu' is not a device"):
        load_model(tmp_path, device="gpu")


def test_tensor_batches_are_the_rows_the_dataloader_would_stack():
    """fit's tensor dataset hands the DataLoader whole batches (__getitems__); the oracle is
    torch's TensorDataset with the default collate, under the same sampler and generator."""
    from torch.utils.data import DataLoader, TensorDataset

    from fastae.train.fit import _collate, _dataset

    x = torch.rand(1000, 7, 3)
    runs = []
    for dataset, collate in ((TensorDataset(x), None), (_dataset(x, "train"), _collate)):
        loader = DataLoader(dataset, 96, shuffle=True, generator=torch.Generator().manual_seed(5), drop_last=True,
                            collate_fn=collate)
        runs.append([b[0] if isinstance(b, list) else b for b in loader])
    assert len(runs[0]) == len(runs[1]) == 1000 // 96
    assert all(torch.equal(a, b) for a, b in zip(*runs))
