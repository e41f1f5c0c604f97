"""The model zoo: shapes, loss terms, configs, learning, and each model's own behaviour."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fastae.models import (MODELS, AdversarialAutoencoder, Autoencoder, ConvAutoencoder, ConvVAE,
                           DenoisingAutoencoder, MLPAutoencoder, SparseAutoencoder, VAE, build_model)

SHAPE = (1, 12, 12)
# Small enough to train in a fraction of a second on the CPU.
SMALL = {
    "mlp": {"hidden": [64], "latent": 8},
    "sparse": {"hidden": [64], "latent": 8},
    "denoising": {"hidden": [64], "latent": 8},
    "conv": {"channels": [16, 32], "latent": 8},
    "vae": {"hidden": [128], "latent": 2},
    "conv_vae": {"channels": [32, 32], "latent": 2},
    "aae": {"hidden": [64], "latent": 4, "disc_hidden": [16]},
}
TERMS = {"sparse": {"loss", "recon", "sparsity", "mse"}, "vae": {"loss", "recon", "kl", "mse"},
         "conv_vae": {"loss", "recon", "kl", "mse"}}
AAE_TERMS = {"ae": {"loss", "recon", "mse"}, "disc": {"loss", "real", "fake", "mse"}, "gen": {"loss", "mse"}}


def small(name, input_shape=SHAPE, **overrides):
    torch.manual_seed(0)
    return build_model(name, input_shape=input_shape, **(SMALL[name] | overrides))


def blobs(n=64, shape=SHAPE, seed=0):
    """n images of one soft round blob each (random centre, width and per-channel brightness), in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    cy, cx = (torch.rand(2, n, 1, 1, 1, generator=g) * torch.tensor([h, w]).view(2, 1, 1, 1, 1)).unbind(0)
    width = 1.5 + 2 * torch.rand(n, 1, 1, 1, generator=g)
    bright = 0.5 + 0.5 * torch.rand(n, c, 1, 1, generator=g)
    ys, xs = torch.arange(h).view(1, 1, h, 1), torch.arange(w).view(1, 1, 1, w)
    return bright * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * width**2))


def params_of(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("name", MODELS)
def test_shapes_flat_and_image(name):
    model = small(name)
    x = blobs(5)
    latent = SMALL[name]["latent"]
    for x_in in (x, x.flatten(1)):
        assert model.encode(x_in).shape == (5, latent)
        assert model(x_in).shape == x_in.shape
    assert model.decode(torch.randn(5, latent)).shape == (5, *SHAPE)
    error = model.recon_error(x)
    assert error.shape == (5,) and not error.requires_grad and (error >= 0).all()


@pytest.mark.parametrize("name", ["conv", "conv_vae"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2, 15, 9)], ids=str)
def test_conv_models_give_back_the_input_size(name, shape):
    model = small(name, input_shape=shape)
    x = blobs(2, shape)
    assert model(x).shape == x.shape
    assert model(x.flatten(1)).shape == (2, math.prod(shape))


@pytest.mark.parametrize("name", MODELS)
def test_loss_terms_are_finite_scalars_and_mse_is_that_of_forward(name):
    model = small(name).eval()
    x = blobs(8)
    for phase, _ in model.phases():
        terms = model.loss(x, phase)
        assert set(terms) == (AAE_TERMS[phase] if name == "aae" else TERMS.get(name, {"loss", "recon", "mse"}))
        for key, value in terms.items():
            assert value.dim() == 0 and torch.isfinite(value), (phase, key, value)
        assert not terms["mse"].requires_grad and terms["loss"].requires_grad
        torch.testing.assert_close(terms["mse"], F.mse_loss(model(x), x).detach())


def test_bce_loss_is_the_fused_output_layer_bce():
    for name in ("mlp", "aae"):
        model = small(name, loss="bce")
        x = blobs(8)
        terms = model.loss(x)
        torch.testing.assert_close(terms["recon"], F.binary_cross_entropy(model(x), x), atol=1e-5, rtol=1e-5)
    model = small("conv", loss="bce")
    torch.testing.assert_close(model.loss(x)["recon"], F.binary_cross_entropy(model(x), x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vae", "conv_vae"])
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_vae_loss_is_the_negative_elbo(name, loss):
    model = small(name, loss=loss, beta=0.5).eval()  # eval: z = mu, no sampling
    x = blobs(8)
    terms = model.loss(x)
    mu, logvar = model.posterior(x)
    x_hat = model(x)
    summed = (F.binary_cross_entropy if loss == "bce" else F.mse_loss)(x_hat, x, reduction="sum")
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum() / 8
    torch.testing.assert_close(terms["recon"], summed / 8, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(terms["kl"], kl, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.5 * terms["kl"])


def test_vae_samples_z_while_training():
    model = small("vae")
    x = blobs(8)
    torch.manual_seed(1)
    first = model.loss(x)["recon"]
    assert not torch.equal(first, model.loss(x)["recon"])
    model.eval()
    assert torch.equal(model.loss(x)["recon"], model.loss(x)["recon"])


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trip(name):
    model = small(name)
    assert model.name == name and isinstance(model, Autoencoder)
    config = json.loads(json.dumps(model.config))
    assert config == model.config and config["input_shape"] == list(SHAPE)
    for rebuilt in (type(model)(**config), build_model(name, **config)):
        assert type(rebuilt) is type(model) and rebuilt.config == model.config
        shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
        assert shapes == {k: v.shape for k, v in model.state_dict().items()}


def test_config_records_defaults():
    assert MLPAutoencoder().config == {"input_shape": [1, 28, 28], "hidden": [128], "latent": 64,
                                       "activation": "relu", "latent_activation": "relu", "loss": "mse"}
    assert VAE().config["latent"] == 2 and VAE().config["loss"] == "bce" and VAE().config["hidden"] == [512]
    assert set(SparseAutoencoder().config) >= {"sparsity", "sparsity_weight", "rho"}
    assert ConvAutoencoder().config["channels"] == [32, 64] and ConvVAE().config["latent"] == 2
    assert AdversarialAutoencoder().config["disc_hidden"] == [256, 256]


def train(model, x, steps=40):
    """Adam (lr 1e-3) per phase on one batch; the "ae" phase's losses."""
    torch.manual_seed(0)
    optimizers = [(phase, torch.optim.Adam(params, lr=1e-3)) for phase, params in model.phases()]
    history = []
    for _ in range(steps):
        for phase, optimizer in optimizers:
            optimizer.zero_grad()
            terms = model.loss(x, phase)
            terms["loss"].backward()
            optimizer.step()
            if phase == "ae":
                history.append(terms["loss"].item())
    return history


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_training_lowers_the_loss(name):
    history = train(small(name), blobs(64))
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-5:]) / 5 < 0.8 * history[0], history


def test_aae_phases_step_their_own_parameters():
    model = small("aae")
    phases = dict(model.phases())
    assert list(phases) == ["ae", "disc", "gen"]
    ids = {name: {id(p) for p in params} for name, params in phases.items()}
    assert ids["ae"] == {id(p) for p in [*model.encoder.parameters(), *model.decoder.parameters()]}
    assert ids["disc"] == {id(p) for p in model.discriminator.parameters()}
    assert ids["gen"] == {id(p) for p in model.encoder.parameters()}
    x = blobs(16)
    for phase, expected in (("ae", ("encoder", "decoder")), ("disc", ("discriminator",)), ("gen", ("encoder",))):
        before = params_of(model)
        optimizer = torch.optim.Adam(phases[phase], lr=1e-3)
        model.zero_grad()
        model.loss(x, phase)["loss"].backward()
        optimizer.step()
        changed = {k.split(".")[0] for k, v in params_of(model).items() if not torch.equal(v, before[k])}
        assert changed == set(expected), phase


def test_vae_sample_and_manifold():
    model = small("vae")
    assert model.sample(7).shape == (7, *SHAPE)
    a, b = (model.sample(3, generator=torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a, b) and ((a >= 0) & (a <= 1)).all()
    grid = model.manifold(3)
    assert grid.shape == (9, *SHAPE) and model.manifold().shape == (400, *SHAPE)
    q = torch.distributions.Normal(0, 1).icdf(torch.tensor([0.05, 0.5, 0.95]))
    z = torch.tensor([[q[j], q[i]] for i in range(3) for j in range(3)])  # row i, column j
    torch.testing.assert_close(grid, model.decode(z).detach())
    assert small("conv_vae").manifold(2).shape == (4, *SHAPE)


@pytest.mark.parametrize("name", ["vae", "conv_vae"])
def test_manifold_needs_a_2d_latent(name):
    with pytest.raises(ValueError, match=r"manifold needs latent == 2 .*got latent=3"):
        small(name, latent=3).manifold()


def test_sparse_kl_penalty_vanishes_when_every_unit_averages_rho():
    model = small("sparse", sparsity="kl", sparsity_weight=3.0, rho=0.1)
    code = model.encoder.layers[-1]
    assert code.activation == "sigmoid"
    with torch.no_grad():  # every code is sigmoid(logit(rho)) = rho
        code.weight.zero_()
        code.bias.fill_(math.log(0.1 / 0.9))
    terms = model.loss(blobs(8))
    assert abs(terms["sparsity"].item()) < 1e-5
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["sparsity"])
    with torch.no_grad():  # every unit at 0.5 instead: 3 · latent · KL(0.1 || 0.5)
        code.bias.zero_()
    expected = 3.0 * 8 * (0.1 * math.log(0.1 / 0.5) + 0.9 * math.log(0.9 / 0.5))
    assert model.loss(blobs(8))["sparsity"].item() == pytest.approx(expected, rel=1e-5)


def test_sparse_l1_penalty_is_weight_times_mean_code_l1_norm():
    model = small("sparse", sparsity="l1", sparsity_weight=0.01)
    x = blobs(8)
    terms = model.loss(x)
    z = model.encode(x)
    assert (z >= 0).all()  # relu code
    torch.testing.assert_close(terms["sparsity"], 0.01 * z.abs().sum(1).mean())
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["sparsity"])


def test_denoising_corruption_statistics():
    torch.manual_seed(0)
    ones, half = torch.ones(100, 100), torch.full((100, 100), 0.5)
    masked = small("denoising", noise="masking", noise_level=0.3).corrupt(ones)
    assert set(masked.unique().tolist()) <= {0.0, 1.0}
    assert abs((masked == 0).float().mean().item() - 0.3) < 0.05
    salted = small("denoising", noise="salt_pepper", noise_level=0.4).corrupt(half)
    assert abs((salted != 0.5).float().mean().item() - 0.4) < 0.05
    assert abs((salted == 1).float().mean().item() - 0.2) < 0.05
    noisy = small("denoising", noise="gaussian", noise_level=0.1).corrupt(half)
    assert noisy.min() >= 0 and noisy.max() <= 1 and abs((noisy - half).std().item() - 0.1) < 0.01
    assert small("denoising", noise="gaussian", noise_level=2.0).corrupt(half).max() == 1.0  # clamped


def test_denoising_corrupts_only_while_training_and_scores_the_clean_input():
    model = small("denoising", noise="masking", noise_level=0.5)
    x = blobs(8)
    assert not torch.equal(model(x), model(x))  # training: a fresh corruption each call
    model.eval()
    assert torch.equal(model(x), model(x)) and torch.equal(model(x), model.decode(model.encode(x)))
    model.train()
    torch.manual_seed(3)
    terms = model.loss(x)
    torch.manual_seed(3)
    recon = model.decode(model.encode(model.corrupt(x)))
    torch.testing.assert_close(terms["recon"], F.mse_loss(recon, x))


@pytest.mark.parametrize("make, message", [
    (lambda: MLPAutoencoder(latent=0), r"MLPAutoencoder: expected latent to be a positive int, got 0"),
    (lambda: MLPAutoencoder(hidden=[]), r"expected hidden to be a non-empty list of positive ints, got \[\]"),
    (lambda: MLPAutoencoder(input_shape=(1, 0, 4)),
     r"expected input_shape to be a non-empty list of positive ints, got \(1, 0, 4\)"),
    (lambda: MLPAutoencoder(loss="huber"), r"unknown loss 'huber'; expected one of \('mse', 'bce'\)"),
    (lambda: MLPAutoencoder(activation="swish"), r"unknown activation 'swish'; expected one of \('none', 'relu'"),
    (lambda: MLPAutoencoder(latent_activation="softmax"), r"unknown latent_activation 'softmax'"),
    (lambda: SparseAutoencoder(sparsity="l2"), r"unknown sparsity 'l2'; expected one of \('l1', 'kl'\)"),
    (lambda: SparseAutoencoder(rho=1.0), r"expected rho in \(0, 1\), got 1.0"),
    (lambda: SparseAutoencoder(sparsity_weight=-1), r"expected sparsity_weight in \[0, inf\), got -1"),
    (lambda: DenoisingAutoencoder(noise="pink"),
     r"unknown noise 'pink'; expected one of \('gaussian', 'masking', 'salt_pepper'\)"),
    (lambda: DenoisingAutoencoder(noise="masking", noise_level=1.5), r"expected noise_level in \[0, 1\], got 1.5"),
    (lambda: ConvAutoencoder(channels=[]), r"ConvAutoencoder: expected channels to be a non-empty list"),
    (lambda: ConvAutoencoder(input_shape=(28, 28)),
     r"expected input_shape \(channels, height, width\), got \[28, 28\]"),
    (lambda: ConvVAE(loss="l1"), r"ConvVAE: unknown loss 'l1'"),
    (lambda: VAE(beta=-0.5), r"VAE: expected beta in \[0, inf\), got -0.5"),
    (lambda: AdversarialAutoencoder(disc_hidden=[]), r"expected disc_hidden to be a non-empty list"),
    (lambda: build_model("gan"), r"unknown model 'gan'; expected one of \['mlp', 'sparse', 'denoising', 'conv'"),
])
def test_bad_config_is_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_inputs_are_named():
    model = small("mlp")
    with pytest.raises(ValueError, match=r"expected x of shape \[B, 1, 12, 12\] or \[B, 144\] with B > 0, got \[4, 12, 12\]"):
        model(torch.rand(4, 12, 12))
    with pytest.raises(ValueError, match=r"expected x of shape .* got \[4, 143\]"):
        model.loss(torch.rand(4, 143))
    with pytest.raises(ValueError, match=r"with B > 0, got \[0, 144\]"):
        model.loss(torch.rand(0, 144))
    with pytest.raises(TypeError, match="expected x to be a Tensor, got ndarray"):
        model.loss(torch.rand(4, 144).numpy())
    with pytest.raises(ValueError, match=r"expected z of shape \[B, 8\], got \[4, 3\]"):
        model.decode(torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"unknown phase 'disc'; expected one of \['ae'\]"):
        model.loss(blobs(4), "disc")


@pytest.mark.parametrize("cls", [ConvAutoencoder, ConvVAE])
def test_conv_models_run_channels_last_with_the_nchw_values(cls):
    """The conv layers keep channels-last weights (oneDNN then runs channels-last from the first
    layer on); loss and gradients are those of the same weights in NCHW, and the state_dict saved
    contiguous loads back into the channels-last model."""
    torch.manual_seed(0)
    model = cls(input_shape=(3, 20, 18), channels=(8, 16), latent=4)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) and not c.weight.is_contiguous()
                         for c in convs)
    reference = cls(input_shape=(3, 20, 18), channels=(8, 16), latent=4)
    reference.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
    for c in reference.modules():
        if isinstance(c, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            c.weight.data = c.weight.data.contiguous()
        if isinstance(c, torch.nn.ReLU):
            c.inplace = False
    model.eval(), reference.eval()  # no sampling noise in the VAE's code
    x = torch.rand(5, 3, 20, 18)
    losses = [m.loss(x)["loss"] for m in (model, reference)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for loss in losses:
        loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
