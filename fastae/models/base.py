"""Autoencoder: the interface every model of the zoo has (encode, decode, loss, phases, recon_error)."""

import functools
import inspect
import math

import torch
from torch import Tensor, nn

from fastae.ops import reconstruction_loss

# Reconstruction losses the models accept; "bce" expects inputs in [0, 1].
LOSSES = ("mse", "bce")


def _jsonable(value):
    """Tuples become lists, recursively, so that a config value survives json.dumps / json.loads unchanged."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _recording_config(init):
    """Wrap a subclass's __init__ so that the object records its constructor arguments as ``config``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        # Only the class being built records: a parent's __init__, reached by super(), gets other arguments.
        if type(self).__init__ is __init__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            self.config = {k: _jsonable(v) for k, v in bound.arguments.items() if k != "self"}

    return __init__


def full_precision(device: torch.device):
    """Context for the fused losses, which take one dtype and run their own matmul: no autocast inside."""
    return torch.autocast(device.type, enabled=False)


class Autoencoder(nn.Module):
    """Base class of the model zoo: one interface for training, evaluation and anomaly detection.

    Subclasses set ``self.encoder`` (flat ``[B, D]`` input -> code ``[B, latent]``) and
    ``self.decoder`` (code -> ``[B, D]`` or ``[B, *input_shape]``, with a
    ``reconstruction(z, x, kind, reduction) -> (loss, x_hat)`` method) and ``self.loss_kind``, or
    override what differs. ``D = prod(input_shape)``. Inputs ``x`` may be ``[B, *input_shape]``
    or flat ``[B, D]``.

    Every subclass's constructor arguments are recorded in ``self.config`` (JSON types), so
    ``type(model)(**model.config)`` rebuilds the model; ``name`` is its name in ``MODELS``.
    """

    name: str  # the model's name in fastae.models.MODELS and on the command line

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_config(cls.__init__)

    def __init__(self, input_shape=(1, 28, 28), latent: int = 64):
        super().__init__()
        self.input_shape = self._check_sizes("input_shape", input_shape)
        self.in_features = math.prod(self.input_shape)
        self.latent = self._check_positive("latent", latent)

    # ---- the interface -------------------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """``[B, *input_shape]`` or ``[B, D]`` -> code ``[B, latent]``."""
        return self.encoder(self._flat(x))

    def decode(self, z: Tensor) -> Tensor:
        """Code ``[B, latent]`` -> reconstruction ``[B, *input_shape]``."""
        if z.dim() != 2 or z.shape[1] != self.latent:
            raise self._error(f"expected z of shape [B, {self.latent}], got {list(z.shape)}")
        return self.decoder(z).reshape(z.shape[0], *self.input_shape)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of x, in x's shape (``[B, *input_shape]`` or ``[B, D]``)."""
        return self.decode(self.encode(self._encoder_input(x))).reshape(x.shape)

    def loss(self, x: Tensor, phase: str = "ae") -> dict:
        """Named 0-d tensors for one training phase (see ``phases``): ``loss``, what that phase
        optimises; its terms (here ``recon``, plus ``_penalties``); and ``mse``, the detached mean
        squared error per pixel between the clean input and the reconstruction."""
        self._check_phase(phase)
        z = self.encode(self._encoder_input(x))
        recon, x_hat = self.decoder.reconstruction(z, x, self.loss_kind, "mean")
        penalties = self._penalties(z)
        return self._terms(x, x_hat, recon + sum(penalties.values()), recon=recon, **penalties)

    def phases(self) -> list:
        """``[(phase name, parameters)]`` in training order: a trainer makes one optimizer per
        phase and, for every batch, runs ``loss(x, phase)``, backward and a step for each phase,
        zeroing the gradients first (a phase may leave gradients on another phase's parameters)."""
        return [("ae", list(self.parameters()))]

    @torch.no_grad()
    def recon_error(self, x: Tensor) -> Tensor:
        """Per-sample mean squared reconstruction error ``[B]`` of the deterministic reconstruction
        ``decode(encode(x))``, without gradients: the anomaly score."""
        x_flat = self._flat(x)
        x_hat = self.decode(self.encode(x_flat)).reshape(x_flat.shape)
        with full_precision(x.device):
            return reconstruction_loss(x_hat, x_flat.float(), "mse", "none").mean(1)

    # ---- hooks and helpers for subclasses -----------------------------------------------------

    def _encoder_input(self, x: Tensor) -> Tensor:
        """What forward() and loss() encode: x itself (a denoising model corrupts it while training)."""
        return x

    def _penalties(self, z: Tensor) -> dict:
        """Named terms on the code added to the reconstruction loss (a sparse model's penalty)."""
        return {}

    def _terms(self, x: Tensor, x_hat: Tensor, loss: Tensor, **terms) -> dict:
        """The loss() dict: ``loss``, its terms and the detached per-pixel ``mse`` of x_hat against x."""
        with torch.no_grad(), full_precision(x.device):
            n = x.shape[0]
            mse = reconstruction_loss(x_hat.reshape(n, -1), x.reshape(n, -1).float(), "mse", "mean")
        return {"loss": loss, **terms, "mse": mse}

    def _flat(self, x: Tensor) -> Tensor:
        """x as ``[B, D]``, or ValueError naming the shapes accepted."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: expected x to be a Tensor, got {type(x).__name__}")
        if x.dim() >= 2 and x.shape[0] > 0 and tuple(x.shape[1:]) in (self.input_shape, (self.in_features,)):
            return x.reshape(x.shape[0], self.in_features)
        image = ", ".join(map(str, self.input_shape))
        raise self._error(f"expected x of shape [B, {image}] or [B, {self.in_features}] with B > 0, "
                          f"got {list(x.shape)}")

    def _check_phase(self, phase: str):
        if phase == "ae" and type(self).phases is Autoencoder.phases:
            return  # every step calls this: phases() lists the parameters (~10 us)
        names = [name for name, _ in self.phases()]
        if phase not in names:
            raise self._error(f"unknown phase {phase!r}; expected one of {names}")

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{type(self).__name__}: {message}")

    def _check_choice(self, what: str, value, allowed):
        if value not in allowed:
            raise self._error(f"unknown {what} {value!r}; expected one of {tuple(allowed)}")
        return value

    def _check_positive(self, what: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self._error(f"expected {what} to be a positive int, got {value!r}")
        return value

    def _check_sizes(self, what: str, value) -> tuple:
        """A non-empty list of positive ints (layer widths, channels) as a tuple."""
        if (not isinstance(value, (tuple, list)) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            raise self._error(f"expected {what} to be a non-empty list of positive ints, got {value!r}")
        return tuple(value)

    def _check_range(self, what: str, value, low: float, high: float, closed: str = "[]") -> float:
        """A number from low to high, each end included where ``closed`` has a bracket: "[]", "[)", "()"."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and (value >= low if closed[0] == "[" else value > low)
                and (value <= high if closed[1] == "]" else value < high)):
            raise self._error(f"expected {what} in {closed[0]}{low}, {high}{closed[1]}, got {value!r}")
        return float(value)
