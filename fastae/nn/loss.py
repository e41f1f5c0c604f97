"""Loss modules over fastae's fused loss ops."""

from typing import Optional

from torch import Tensor, nn

from fastae.ops._common import check_choice
from fastae.ops.loss import KINDS, REDUCTIONS, gaussian_kl, reconstruction_loss


class ReconstructionLoss(nn.Module):
    """``fastae.ops.reconstruction_loss`` as a module: ``loss_fn(input, target, weight=None)``.

    kind: ``mse``, ``l1``, ``bce`` or ``bce_logits``; reduction: ``mean``, ``sum``, ``none`` or ``batch``.
    """

    def __init__(self, kind: str = "mse", reduction: str = "mean"):
        super().__init__()
        check_choice("ReconstructionLoss", "kind", kind, KINDS)
        check_choice("ReconstructionLoss", "reduction", reduction, REDUCTIONS)
        self.kind, self.reduction = kind, reduction

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return reconstruction_loss(input, target, self.kind, self.reduction, weight)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, reduction={self.reduction!r}"


class GaussianKL(nn.Module):
    """``fastae.ops.gaussian_kl`` as a module: ``kl(mu, logvar)``, KL(N(mu, exp(logvar)) || N(0, I))."""

    def __init__(self, reduction: str = "batch"):
        super().__init__()
        check_choice("GaussianKL", "reduction", reduction, REDUCTIONS)
        self.reduction = reduction

    def forward(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return gaussian_kl(mu, logvar, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
