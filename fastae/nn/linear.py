"""FusedLinear and FusedMLP: nn.Linear (+ activation) on fastae.ops.linear_act, and a stack of them
on fastae.ops.fused_mlp (the whole network in one op)."""

from typing import Optional, Sequence

import torch
from torch import nn

from fastae.ops._common import DTYPES, check_choice
from fastae.ops.linear import ACTIVATIONS, linear_act
from fastae.ops.mlp import fused_mlp


class FusedLinear(nn.Module):
    """``act(x @ weight.T + bias)`` in one fused op.

    Parameters and initialisation are those of ``nn.Linear(in_features, out_features, bias)``
    (state_dict keys ``weight`` [out, in] and ``bias`` [out]), so weights move freely between the two.
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "relu", bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FusedLinear: expected {name} to be a positive int, got {value!r}")
        check_choice("FusedLinear", "activation", activation, ACTIVATIONS)
        if dtype is not None and dtype not in DTYPES:  # the op would refuse every call
            raise TypeError(f"FusedLinear: dtype must be float32, float16 or bfloat16 (the fused op's), got {dtype}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.register_parameter("bias", nn.Parameter(torch.empty(out_features, **factory)) if bias else None)
        self.reset_parameters()

    reset_parameters = nn.Linear.reset_parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_act(x, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"activation={self.activation!r}, bias={self.bias is not None}")


class FusedMLP(nn.Module):
    """A stack of FusedLinear layers: ``sizes=[784, 128, 64]`` gives 784→128→64, run as one
    ``fastae.ops.fused_mlp`` call (forward and backward each one op for the whole stack).

    Hidden layers use ``activation``; the last layer uses ``out_activation`` (None: no activation).
    Parameters live in ``layers`` (state_dict keys ``layers.<i>.weight`` / ``layers.<i>.bias``).
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", out_activation: Optional[str] = None,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"FusedMLP: expected at least two sizes (in and out), got {sizes}")
        check_choice("FusedMLP", "activation", activation, ACTIVATIONS)
        out_activation = "none" if out_activation is None else out_activation
        check_choice("FusedMLP out_activation", "activation", out_activation, ACTIVATIONS)
        last = len(sizes) - 2
        self.layers = nn.ModuleList(
            FusedLinear(a, b, out_activation if i == last else activation, bias, device=device, dtype=dtype)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.layers
        return fused_mlp(x, [layer.weight for layer in layers], [layer.bias for layer in layers],
                         [layer.activation for layer in layers])
