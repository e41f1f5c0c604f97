"""Variational autoencoders: VAE (fully connected) and ConvVAE."""

import math
from typing import Optional

import torch
from torch import Tensor

from fastae.nn import FusedLinear, FusedMLP
from fastae.ops import ACTIVATIONS, gaussian_kl
from fastae.models.base import LOSSES, Autoencoder, full_precision
from fastae.models.conv import conv_parts
from fastae.models.mlp import MLPDecoder


class _Variational(Autoencoder):
    """What VAE and ConvVAE share: Gaussian posterior heads on an encoder trunk, the ELBO, sampling.

    Subclasses build a trunk (flat ``[B, D]`` -> ``[B, features]``) and a decoder, then call
    ``_init_posterior``.
    """

    def _init_posterior(self, trunk, features: int, decoder, loss: str, beta: float):
        self.loss_kind = self._check_choice("loss", loss, LOSSES)
        self.beta = self._check_range("beta", beta, 0, math.inf, "[)")
        self.trunk = trunk
        self.mu = FusedLinear(features, self.latent, "none")
        self.logvar = FusedLinear(features, self.latent, "none")
        self.decoder = decoder

    def posterior(self, x: Tensor):
        """``(mu, logvar)``, each ``[B, latent]``: the Gaussian q(z | x)."""
        h = self.trunk(self._flat(x))
        return self.mu(h), self.logvar(h)

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean ``mu`` ``[B, latent]``: deterministic, as forward() and recon_error() use it."""
        return self.posterior(x)[0]

    def loss(self, x: Tensor, phase: str = "ae") -> dict:
        """The negative ELBO: ``loss = recon + beta·kl``, ``recon`` summed over pixels and ``kl``
        (KL(q(z | x) || N(0, I))) over latent dims, both averaged over the batch; plus ``mse``.
        In training mode z is sampled, ``mu + exp(logvar / 2)·eps``; in eval mode z = mu."""
        self._check_phase(phase)
        mu, logvar = self.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        recon, x_hat = self.decoder.reconstruction(z, x, self.loss_kind, "batch")
        with full_precision(x.device):
            kl = gaussian_kl(mu.float(), logvar.float(), "batch")
        return self._terms(x, x_hat, recon + self.beta * kl, recon=recon, kl=kl)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n images ``[n, *input_shape]`` decoded from codes drawn from the prior N(0, I)."""
        self._check_positive("n", n)
        ref = self.mu.weight
        return self.decode(torch.randn(n, self.latent, generator=generator, device=ref.device, dtype=ref.dtype))

    @torch.no_grad()
    def manifold(self, n: int = 20) -> Tensor:
        """``[n·n, *input_shape]``: the decoded 2-D latent grid at the normal quantiles q of
        ``linspace(0.05, 0.95, n)``; image ``i·n + j`` (row i, column j) decodes z = (q_j, q_i).
        Needs latent == 2."""
        if self.latent != 2:
            raise self._error(f"manifold needs latent == 2 (a 2-D grid of codes), got latent={self.latent}")
        self._check_positive("n", n)
        ref = self.mu.weight
        q = torch.special.ndtri(torch.linspace(0.05, 0.95, n, device=ref.device, dtype=torch.float64)).to(ref.dtype)
        rows, cols = torch.meshgrid(q, q, indexing="ij")
        return self.decode(torch.stack([cols, rows], -1).reshape(n * n, 2))


class VAE(_Variational):
    """Variational autoencoder: trunk ``FusedMLP([D, *hidden])`` (``activation`` throughout),
    linear heads mu and logvar, decoder ``MLPDecoder`` ``[latent, *reversed(hidden), D]`` with a
    sigmoid output. loss: ``bce`` (the fused output layer + BCE) or ``mse``; ``beta`` weights the KL."""

    name = "vae"

    def __init__(self, input_shape=(1, 28, 28), hidden=(512,), latent: int = 2, activation: str = "relu",
                 loss: str = "bce", beta: float = 1.0):
        super().__init__(input_shape, latent)
        hidden = self._check_sizes("hidden", hidden)
        self._check_choice("activation", activation, ACTIVATIONS)
        trunk = FusedMLP([self.in_features, *hidden], activation, out_activation=activation)
        self._init_posterior(trunk, hidden[-1], MLPDecoder(latent, hidden[::-1], self.in_features, activation),
                             loss, beta)


class ConvVAE(_Variational):
    """Variational autoencoder on ConvAutoencoder's conv encoder trunk and decoder
    (``fastae.models.conv``). input_shape: (C, H, W). loss: ``bce`` or ``mse``; ``beta`` weights the KL."""

    name = "conv_vae"

    def __init__(self, input_shape=(1, 28, 28), channels=(32, 64), latent: int = 2, loss: str = "bce",
                 beta: float = 1.0):
        super().__init__(input_shape, latent)
        trunk, decoder = conv_parts(self, channels)
        self._init_posterior(trunk, trunk.features, decoder, loss, beta)
