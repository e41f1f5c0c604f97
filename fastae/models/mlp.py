"""Fully connected autoencoders: the classic one, sparse and denoising."""

import math

import torch
from torch import Tensor

from fastae.nn import FusedMLP
from fastae.ops import _backend
from fastae.ops import loss as _loss_ops
from fastae.ops import mlp as _mlp_ops
from fastae.ops import ACTIVATIONS, fused_mlp, linear_bce_loss, reconstruction_loss
from fastae.models.base import LOSSES, Autoencoder, full_precision


class MLPDecoder(FusedMLP):
    """``FusedMLP([latent, *hidden, out_features])``: ``activation`` on the hidden layers, sigmoid out.

    ``reconstruction`` scores it against a target; with ``bce`` it runs the last layer, its
    sigmoid and the BCE as one fused ``linear_bce_loss``, so the output logits never exist whole.
    """

    def __init__(self, latent: int, hidden, out_features: int, activation: str = "relu"):
        super().__init__([latent, *hidden, out_features], activation, out_activation="sigmoid")

    def reconstruction(self, z: Tensor, x: Tensor, kind: str, reduction: str):
        """Loss of decoding z ``[B, latent]`` against x (B·out_features values, any shape), and the
        reconstruction ``[B, out_features]`` (detached with ``bce``). kind: ``mse`` or ``bce``;
        reduction as ``fastae.ops.reconstruction_loss``."""
        target = x.reshape(z.shape[0], -1).float()
        if kind != "bce":
            x_hat = self(z)
            with full_precision(z.device):
                return reconstruction_loss(x_hat, target, kind, reduction), x_hat
        h = z
        for layer in self.layers[:-1]:
            h = layer(h)
        last = self.layers[-1]
        with full_precision(z.device):
            loss = linear_bce_loss(h.float(), last.weight.float(), last.bias.float(), target, reduction)
        with torch.no_grad():  # only for the detached mse term
            x_hat = last(h)
        return loss, x_hat


class MLPAutoencoder(Autoencoder):
    """The classic fully connected autoencoder.

    encoder: ``FusedMLP([D, *hidden, latent])``, ``activation`` on the hidden layers and
    ``latent_activation`` on the code; decoder: ``MLPDecoder`` ``[latent, *reversed(hidden), D]``
    with a sigmoid output, so inputs belong in [0, 1]. ``D = prod(input_shape)``.
    loss: ``mse`` or ``bce`` (the fused output layer + BCE, ``fastae.ops.linear_bce_loss``),
    both averaged over pixels.
    """

    name = "mlp"

    def __init__(self, input_shape=(1, 28, 28), hidden=(128,), latent: int = 64, activation: str = "relu",
                 latent_activation: str = "relu", loss: str = "mse"):
        super().__init__(input_shape, latent)
        hidden = self._check_sizes("hidden", hidden)
        self._check_choice("activation", activation, ACTIVATIONS)
        self._check_choice("latent_activation", latent_activation, ACTIVATIONS)
        self.loss_kind = self._check_choice("loss", loss, LOSSES)
        self.encoder = FusedMLP([self.in_features, *hidden, latent], activation, out_activation=latent_activation)
        self.decoder = MLPDecoder(latent, hidden[::-1], self.in_features, activation)

    def loss(self, x: Tensor, phase: str = "ae") -> dict:
        """As ``Autoencoder.loss``; with the mse loss and no penalty on the code, encoder and decoder
        run as one ``fused_mlp`` call (the code is not needed on its own) and the detached ``mse``
        term is the loss itself rather than a second pass over the reconstruction."""
        if self.loss_kind != "mse" or type(self)._penalties is not Autoencoder._penalties:
            return super().loss(x, phase)
        self._check_phase(phase)
        layers = [*self.encoder.layers, *self.decoder.layers]
        x_flat = self._flat(self._encoder_input(x))
        x_hat = fused_mlp(x_flat, [m.weight for m in layers], [m.bias for m in layers], [m.activation for m in layers])
        with full_precision(x.device):
            recon = reconstruction_loss(x_hat, x.reshape(x_flat.shape[0], -1).float(), "mse", "mean")
        return {"loss": recon, "recon": recon, "mse": recon.detach()}

    def _loss_and_grads(self, x: Tensor):
        """``loss(x)`` followed by ``backward()`` without autograd, for the trainer: the same calls
        (``fused_mlp``'s forward, in the autocast dtype under autocast; the fused MSE that keeps its
        gradient; ``fused_mlp``'s backward from that gradient) on the same tensors, so the same
        terms and parameter gradients bit for bit, set as each parameter's ``.grad`` (after
        ``zero_grad(set_to_none=True)``) as backward() would. What it saves is autograd's graph,
        its nodes and the two ops' Python wrappers around the C++ calls: on the 2-core CPU of the
        README 0.2 ms a step at batch 1-256 (2.19 against 2.39 ms at 256 in fp32), 0.5-0.8 ms at
        4096 (experiments/mlp_step_ab.py --against autograd). None, with nothing done, where
        loss() would not be these calls alone: another loss or phase penalties, a batch that is not
        float32, parameters that are not all float32 leaves needing grads or that carry gradient
        hooks, grad mode off, a backend whose loss needs one dtype under autocast."""
        if (self.loss_kind != "mse" or type(self)._penalties is not Autoencoder._penalties
                or type(self).loss is not MLPAutoencoder.loss or not torch.is_grad_enabled()
                or x.dtype != torch.float32):
            return None
        layers = [*self.encoder.layers, *self.decoder.layers]
        params = [p for m in layers for p in (m.weight, m.bias)]
        if not all(type(p) is torch.nn.Parameter and p.requires_grad and p.dtype == torch.float32
                   and not p._backward_hooks and not getattr(p, "_post_accumulate_grad_hooks", None)
                   for p in params):
            return None
        if (torch.is_autocast_enabled(x.device.type)
                and _backend.resolve(x.device) not in _loss_ops._MIXED_DTYPE_BACKENDS):
            return None  # decided before _encoder_input draws its noise
        x_flat = self._flat(self._encoder_input(x))
        h, weights, biases, acts, backend = _mlp_ops._prepare(x_flat, [m.weight for m in layers],
                                                              [m.bias for m in layers], [m.activation for m in layers])
        target = x.reshape(x_flat.shape[0], -1)
        with torch.no_grad():
            out, hidden, preacts = _mlp_ops._FWD[backend](h, weights, biases, acts, True)
            recon, grad = _loss_ops._RECON[backend](out.contiguous(), target.contiguous(), None, _loss_ops._MSE,
                                                    _loss_ops._MEAN, out.shape[0], True)
            _, dw, db = _mlp_ops._BWD[backend](grad, h, weights, hidden, out, preacts, acts, False, True, True)
        for m, gw, gb in zip(layers, dw, db):  # autocast's copies give their gradients back in float32
            m.weight.grad, m.bias.grad = gw.to(torch.float32), gb.to(torch.float32)
        return {"loss": recon, "recon": recon, "mse": recon}


class SparseAutoencoder(MLPAutoencoder):
    """MLPAutoencoder with a sparsity penalty on the code ``z`` ``[B, latent]``, weighted by ``sparsity_weight``:

    * ``l1``: ``mean over the batch of Σ_j |z_j|``; the code activation is relu.
    * ``kl``: ``Σ_j KL(rho || rho_hat_j)``, rho_hat_j the batch mean of z_j (each unit active a
      fraction rho of the time); the code activation is sigmoid, so rho_hat_j is in (0, 1).

    loss terms: ``recon``, ``sparsity``.
    """

    name = "sparse"
    SPARSITIES = ("l1", "kl")

    def __init__(self, input_shape=(1, 28, 28), hidden=(128,), latent: int = 64, activation: str = "relu",
                 loss: str = "mse", sparsity: str = "l1", sparsity_weight: float = 1e-3, rho: float = 0.05):
        self._check_choice("sparsity", sparsity, self.SPARSITIES)
        super().__init__(input_shape, hidden, latent, activation, "sigmoid" if sparsity == "kl" else "relu", loss)
        self.sparsity = sparsity
        self.sparsity_weight = self._check_range("sparsity_weight", sparsity_weight, 0, math.inf, "[)")
        self.rho = self._check_range("rho", rho, 0, 1, "()")

    def _penalties(self, z: Tensor) -> dict:
        z = z.float()
        if self.sparsity == "l1":
            penalty = z.abs().sum(1).mean()
        else:
            rho = self.rho
            # Clamped so that a dead or saturated unit gives a large finite penalty, not inf.
            rho_hat = z.mean(0).clamp(1e-6, 1 - 1e-6)
            penalty = (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
        return {"sparsity": self.sparsity_weight * penalty}


class DenoisingAutoencoder(MLPAutoencoder):
    """MLPAutoencoder trained to reconstruct the clean x from ``corrupt(x)``.

    noise (``noise_level`` = level):

    * ``gaussian``: ``x + level·N(0, 1)``, clamped to [0, 1];
    * ``masking``: each value zeroed with probability level;
    * ``salt_pepper``: each value set to 0 or 1 (half each) with probability level.

    In training mode forward() and loss() encode corrupt(x) (loss() still scores against the
    clean x); in eval mode nothing is corrupted.
    """

    name = "denoising"
    NOISES = ("gaussian", "masking", "salt_pepper")

    def __init__(self, input_shape=(1, 28, 28), hidden=(128,), latent: int = 64, activation: str = "relu",
                 latent_activation: str = "relu", loss: str = "mse", noise: str = "gaussian",
                 noise_level: float = 0.3):
        super().__init__(input_shape, hidden, latent, activation, latent_activation, loss)
        self.noise = self._check_choice("noise", noise, self.NOISES)
        # The gaussian level is a standard deviation; the others are probabilities.
        self.noise_level = self._check_range("noise_level", noise_level, 0, math.inf if noise == "gaussian" else 1,
                                             "[)" if noise == "gaussian" else "[]")

    def corrupt(self, x: Tensor) -> Tensor:
        """A corrupted copy of x (any shape, values in [0, 1]), drawn from torch's global generator."""
        level = self.noise_level
        if self.noise == "gaussian":
            return (x + level * torch.randn_like(x)).clamp(0, 1)
        if self.noise == "masking":
            return x * (torch.rand_like(x) >= level)
        hit = torch.rand_like(x) < level
        return torch.where(hit, (torch.rand_like(x) < 0.5).to(x.dtype), x)

    def _encoder_input(self, x: Tensor) -> Tensor:
        return self.corrupt(x) if self.training else x
