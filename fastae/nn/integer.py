"""Integer entropy networks: the hyper-synthesis and the checkerboard context of a codec computed
in integer arithmetic at inference (fastae.ops.int_conv2d), so that encoder and decoder choose the
same probability tables on any device (Ballé, Johnston & Minnen, ICLR 2019), and trained with
fake quantization (straight-through gradients) so that the integer network is what training sees.

Layers: ``IntegerConv2d`` (stride 1) and ``IntegerConvTranspose2d`` hold float weights and biases
(trainable) and calibrated buffers: ``in_scale`` [Cin] and ``out_scale`` [Cout], the real value of
one step of the integer activation each channel reads and writes, and ``out_bound``, the clip of
the output in steps. Their integer form is a pure function of those, computed in float64 element
by element (IEEE-exact operations: the same integers on any machine):

* weights: ``w = round(W * in_scale / s_w)`` in [-127, 127] with ``s_w = max |W * in_scale| / 127``
  per output channel (int8, per-channel scale, the input scales folded in);
* bias: ``round(b / s_w)`` in accumulator units (int32), whose real value is ``s_w`` per unit;
* rescaling: ``s_w / out_scale`` as an integer multiplier over a power of two (20 significant
  bits), and 0.01 times it for negative accumulators where the float layer has a LeakyReLU;
* clip: ``+-out_bound`` steps, the largest activation the next layer reads (int16, at most
  2^14 - 1). A new network takes the bound no weights can overflow, ``127 * fan_in * bound``
  below 2^30; calibration (``from_float``) raises it to what the actual weights allow with a
  margin of 2 (``max |x| * sum |w| + |bias|`` at most 2^30 for every output), which gives every
  hidden activation of the shipped model its 15 bits. The paper's 8 bits would not do here: one
  network serves every quality, and the activations' ranges differ tenfold between qualities.

The networks' outputs, means and scales, are int32 in units of ``2^-OUTPUT_FRAC_BITS``; a latent's
table is ``scale_table_index(scales, thresholds)``, an integer comparison with the thresholds
scaled once by the same power of two.

Inference runs channels-last int16 tensors through the kernels (``forward_int``); training runs
the float ``forward``, which rounds weights, biases and activations to the same grids (half up,
straight-through inside the clip, zero gradient outside it, as the paper's clipping). The float and
integer forms agree up to the rescaling multiplier's 2^-20 and rounding ties.
"""

import contextlib
import math
import threading
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastae.ops.int_conv import (ACT_MAX, MULT_LIMIT, WEIGHT_MAX, IntConvLayer, add_clamp, conv_plan,
                                 conv_transpose_plan, int_conv2d, rescale)

LEAKY_SLOPE = 0.01
OUTPUT_FRAC_BITS = 12  # means and scales in units of 2^-12 = 0.00024 (the tables' thresholds are 0.011 apart or more)
_ACC_BUDGET = 1 << 30  # what max |x| * sum |w| + |bias| may reach: half of int32
_OUT_LIMIT = (1 << 31) - 1


_constant = threading.local()  # .depth > 0: constant_weights() is active in this thread


@contextlib.contextmanager
def constant_weights():
    """Within this block (in this thread) the integer layers' float forward treats their weights as
    constants, as it always does when gradients are off: each layer's fake-quantized weight and
    bias are computed once and reused (until the parameters change), and no gradient reaches them.
    The same values as the differentiable forward; for gradient descent on a network's *inputs*
    (fastae.codec.refine), where the weight's fake quantization was most of each step's work."""
    _constant.depth = getattr(_constant, "depth", 0) + 1
    try:
        yield
    finally:
        _constant.depth -= 1


def activation_bound(fan_in: int) -> int:
    """The clip no weights can overflow: 127 * fan_in * bound <= 2^30, at most ACT_MAX."""
    return max(1, min(ACT_MAX, _ACC_BUDGET // (WEIGHT_MAX * fan_in)))


def _round_half_up(x: Tensor) -> Tensor:
    return torch.floor(x + 0.5)


def _ste(x: Tensor, rounded: Tensor) -> Tensor:
    """``rounded`` forward, the identity's gradient backward."""
    return x + (rounded - x).detach()


def fake_quant(x: Tensor, scale: Tensor, bound) -> Tensor:
    """``x`` [B, C, H, W] rounded half up to multiples of ``scale`` [C] and clipped to ``+-bound``
    steps (an int or a 0-d tensor): the real value of the integer activation. Gradient: the
    identity inside the clip, zero outside."""
    s = scale.to(x.dtype).view(1, -1, 1, 1)
    bound = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    q = torch.minimum(torch.maximum(x / s, -bound), bound)
    return _ste(q, _round_half_up(q)) * s


def quantize_multiplier(ratio: Tensor) -> tuple:
    """(mult, shift) int32 per channel with mult / 2^shift ~ ``ratio`` (positive, float64): mult in
    [2^19, 2^20] where the shift (in [1, 40]) allows."""
    _, exponent = torch.frexp(ratio.double())  # ratio = mantissa * 2^exponent, mantissa in [0.5, 1)
    shift = (20 - exponent).clamp(1, 40)
    mult = torch.round(torch.ldexp(ratio.double(), shift.double()))
    if bool((mult >= MULT_LIMIT).any()):
        raise ValueError(f"an integer layer's rescaling of {float(ratio.max()):.4g} needs a multiplier of 2^21 or "
                         "more: its output scale is too small for its accumulators")
    return mult.to(torch.int32), shift.to(torch.int32)


class _IntegerConv(nn.Module):
    """The common part of IntegerConv2d and IntegerConvTranspose2d (see the module docstring)."""

    transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation: str, plan,
                 fixed_output: bool):
        super().__init__()
        if activation not in ("none", "leaky_relu"):
            raise ValueError(f"{type(self).__name__}: activation must be 'none' or 'leaky_relu', got {activation!r}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation, self.plan, self.fixed_output = activation, plan, fixed_output
        shape = (in_channels, out_channels) if self.transposed else (out_channels, in_channels)
        self.weight = nn.Parameter(torch.empty(*shape, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.register_buffer("in_scale", torch.ones(in_channels))
        self.register_buffer("out_scale", torch.ones(out_channels))
        self.register_buffer("out_bound", torch.tensor(ACT_MAX))  # unused with fixed_output
        self._cache = {}
        self._fake_cache = None  # (state, (weight, bias)) of _fake_weights
        self._integers = None  # what load_integers gave

    @property
    def fan_in(self) -> int:
        """Products per output in the widest phase of the layer's plan."""
        return self.in_channels * max(t1 - t0 for _, _, t0, t1 in self.plan.phases)

    def _in_view(self, t):
        return t.view(-1, 1, 1, 1) if self.transposed else t.view(1, -1, 1, 1)

    def _out_view(self, t):
        return t.view(1, -1, 1, 1) if self.transposed else t.view(-1, 1, 1, 1)

    def _out_dims(self):
        return (0, 2, 3) if self.transposed else (1, 2, 3)

    def _conv(self, x, weight, bias):
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantized float forward (training, and the float reference of the integer layer):
        ``x`` [B, Cin, H, W] real values on the in_scale grid -> [B, Cout, H', W'] on the out_scale grid."""
        weight, bias = self._fake_weights()
        v = self._conv(x, weight.to(x.dtype), bias.to(x.dtype))
        if v.dtype in (torch.float16, torch.bfloat16):  # e.g. under autocast: the grids need float32's 24 bits
            v = v.float()
        if self.activation == "leaky_relu":
            v = F.leaky_relu(v, LEAKY_SLOPE)
        if self.fixed_output:
            s = self.out_scale.to(v.dtype).view(1, -1, 1, 1)
            return _ste(v / s, _round_half_up(v / s)) * s
        return fake_quant(v, self.out_scale, self.out_bound)

    def _fake_weights(self):
        """(weight, bias) rounded to the integer layer's grids, straight-through; computed once and
        reused while the parameters are unchanged when no gradient can reach them (gradients off,
        parameters frozen, or within ``constant_weights()``)."""
        if torch.is_grad_enabled() and getattr(_constant, "depth", 0) == 0 and \
                (self.weight.requires_grad or self.bias.requires_grad):
            return self._quantized_weights()
        state = tuple((t.device, t.dtype, t.data_ptr(), t._version) for t in (self.weight, self.bias, self.in_scale))
        cached = self._fake_cache
        if cached is None or cached[0] != state:
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: a graph may save them
                cached = self._fake_cache = (state, self._quantized_weights())
        return cached[1]

    def _quantized_weights(self):
        in_scale = self.in_scale.to(self.weight.dtype)
        ws = self.weight * self._in_view(in_scale)
        step = (ws.detach().abs().amax(self._out_dims()) / WEIGHT_MAX).clamp_min(torch.finfo(ws.dtype).tiny)
        w = ws / self._out_view(step)
        w_int = _ste(w, _round_half_up(w).clamp(-WEIGHT_MAX, WEIGHT_MAX))
        weight = w_int * self._out_view(step) / self._in_view(in_scale)
        bias = _ste(self.bias / step, _round_half_up(self.bias / step)) * step
        return weight, bias

    def _integer_weights(self, in_scale: Tensor):
        """(int8 weights, float64 s_w [Cout], float64 bias in accumulator units) for float64 ``in_scale``."""
        ws = self.weight.detach().double().cpu() * self._in_view(in_scale)
        step = ws.abs().amax(self._out_dims()) / WEIGHT_MAX
        step = torch.where(step > 0, step, torch.ones_like(step))
        w_int = torch.round(ws / self._out_view(step)).clamp(-WEIGHT_MAX, WEIGHT_MAX).to(torch.int8)
        return w_int, step, torch.round(self.bias.detach().double().cpu() / step)

    @torch.no_grad()
    def safe_input_bound(self, in_amax: Tensor) -> int:
        """The largest input clip (steps, at most ACT_MAX) for inputs whose channels reach ``in_amax``
        [Cin] at the clip, such that max |x| * sum |w| + |bias| <= 2^30 for every output of every
        phase (a margin of 2 under int32, for fine-tuning to move the weights). The integer weights
        do not depend on the clip (in_scale = in_amax / clip is normalised away per output); the
        bias in accumulator units grows with it."""
        in_amax = in_amax.double().cpu()
        w_int, _, bias = self._integer_weights(torch.where(in_amax > 0, in_amax, torch.ones_like(in_amax)))
        taps = torch.zeros(len(self.plan.phases), self.kernel_size, self.kernel_size, dtype=torch.float64)
        for p, (_, _, t0, t1) in enumerate(self.plan.phases):
            for ky, kx, _, _ in self.plan.taps[t0:t1]:
                taps[p, ky, kx] = 1
        w = w_int.double().abs().transpose(0, 1) if self.transposed else w_int.double().abs()  # [Cout, Cin, k, k]
        gain = torch.einsum("oikl,pkl->op", w, taps).amax(1)
        per_step = float((gain + bias.abs()).max())  # the bias here is that of a clip of one step
        return int(max(1, min(ACT_MAX, _ACC_BUDGET // max(per_step, 1.0))))

    @torch.no_grad()
    def integer_layer(self, plan=None) -> IntConvLayer:
        """The integer form (see the module docstring) with ``plan`` (default: the layer's own), on the
        weight's device: the integers ``load_integers`` gave, else computed on the CPU in float64 from
        the parameters and buffers (cached until they change)."""
        plan = plan or self.plan
        if self._integers is not None:
            state = ("loaded", self.weight.device)
        else:
            state = (self.weight.device, *((t.data_ptr(), t._version) for t in
                                           (self.weight, self.bias, self.in_scale, self.out_scale, self.out_bound)))
        if self._cache.get(plan, (None,))[0] != state:
            parts = self._integers if self._integers is not None else self.derive_integers()
            bound = int(parts["bound"])
            layer = IntConvLayer.make(parts["weight"], parts["bias"], parts["mult"], parts["shift"], plan, -bound,
                                      bound, torch.int32 if self.fixed_output else torch.int16)
            self._cache[plan] = (state, layer.to(self.weight.device))
        return self._cache[plan][1]

    @torch.no_grad()
    def derive_integers(self) -> dict:
        """The integer form of the layer as CPU tensors, what a weights file stores: "weight" int8
        (the float layer's shape), "bias" int32 [Cout] (accumulator units), "mult" int32 [2, Cout] (of
        non-negative and negative accumulators), "shift" int32 [Cout], "bound" int32 [] (the output clip)."""
        w_int, step, bias = self._integer_weights(self.in_scale.double().cpu())
        if bool((bias.abs() > _ACC_BUDGET).any()):
            raise ValueError(f"{type(self).__name__}: a bias of {float(bias.abs().max()):.4g} accumulator units "
                             "exceeds 2^30: the layer's weights are too small for its bias")
        ratio = step / self.out_scale.double().cpu()
        mult, shift = quantize_multiplier(ratio)
        mult_neg = mult
        if self.activation == "leaky_relu":
            mult_neg = torch.round(torch.ldexp(ratio * LEAKY_SLOPE, shift.double())).to(torch.int32)
        bound = _OUT_LIMIT if self.fixed_output else int(self.out_bound)
        return {"weight": w_int, "bias": bias.to(torch.int32), "mult": torch.stack([mult, mult_neg]),
                "shift": shift, "bound": torch.tensor(bound, dtype=torch.int32)}

    def load_integers(self, tensors: dict):
        """Compute with these integers (``derive_integers``' form, as a weights file stores them) from
        now on, whatever the float parameters say; ValueError naming what is wrong. ``None`` goes back
        to deriving them from the parameters."""
        if tensors is not None:
            c = self.out_channels
            want = {"weight": (torch.int8, tuple(self.weight.shape)), "bias": (torch.int32, (c,)),
                    "mult": (torch.int32, (2, c)), "shift": (torch.int32, (c,)), "bound": (torch.int32, ())}
            if set(tensors) != set(want):
                raise ValueError(f"{type(self).__name__}: expected integer tensors {sorted(want)}, "
                                 f"got {sorted(tensors)}")
            for name, (dtype, shape) in want.items():
                t = tensors[name]
                if t.dtype != dtype or tuple(t.shape) != shape:
                    raise ValueError(f"{type(self).__name__}: expected integer {name} {dtype} {list(shape)}, got "
                                     f"{t.dtype} {list(t.shape)}")
            bound = int(tensors["bound"])
            if not 1 <= bound <= (_OUT_LIMIT if self.fixed_output else ACT_MAX):
                raise ValueError(f"{type(self).__name__}: integer bound {bound} out of range")
            tensors = {name: t.cpu().contiguous() for name, t in tensors.items()}
        self._integers = tensors
        self._cache = {}

    def forward_int(self, x: Tensor, plan=None, x_max: Optional[int] = None) -> Tensor:
        """The integer layer on int16 channels-last ``x`` [B, H, W, Cin] (``plan``: another plan of the
        same kernel, e.g. a checkerboard half; ``x_max``: a known bound of |x|, the clip that made x):
        int16 [B, H', W', Cout], int32 for a fixed output."""
        return int_conv2d(x, self.integer_layer(plan), x_max=x_max)

    @torch.no_grad()
    def load_float(self, conv: nn.Module):
        """Copy the weight and bias of a float nn.Conv2d / nn.ConvTranspose2d of the same shape."""
        if conv.weight.shape != self.weight.shape or conv.bias is None or conv.bias.shape != self.bias.shape:
            raise ValueError(f"{type(self).__name__}: expected a float convolution with weight "
                             f"{list(self.weight.shape)} and a bias, got {list(conv.weight.shape)}")
        self.weight.copy_(conv.weight)
        self.bias.copy_(conv.bias)

    def extra_repr(self) -> str:
        out = "fixed_output=True" if self.fixed_output else f"out_bound={int(self.out_bound)}"
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, " \
               f"activation={self.activation}, {out}"


class IntegerConv2d(_IntegerConv):
    """nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding) (stride 1) as an integer
    layer; ``activation`` "leaky_relu" (slope 0.01) or "none"; ``fixed_output``: an unclipped int32
    output in units of ``out_scale`` (a network's last layer) rather than a clipped int16 activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 activation: str = "none", fixed_output: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, activation, conv_plan(kernel_size, padding),
                         fixed_output)
        self.padding = padding

    def _conv(self, x, weight, bias):
        return F.conv2d(x, weight, bias, padding=self.padding)


class IntegerConvTranspose2d(_IntegerConv):
    """nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding)
    as an integer layer (run as stride phases of small convolutions); arguments as IntegerConv2d."""

    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int = 0,
                 output_padding: int = 0, activation: str = "none", fixed_output: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, activation,
                         conv_transpose_plan(kernel_size, stride, padding, output_padding), fixed_output)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding

    def _conv(self, x, weight, bias):
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding)


def _channel_max(samples: Sequence[Tensor]) -> Tensor:
    """float64 per-channel max |value| over [B, C, H, W] tensors of any sizes."""
    return torch.stack([s.detach().abs().amax((0, 2, 3)).double().cpu() for s in samples]).amax(0)


@torch.no_grad()
def _calibrate(layer: _IntegerConv, amax: Tensor, following: _IntegerConv):
    """Set ``layer``'s clip to what ``following`` can read of values up to ``amax`` [C] and its
    output scale so that ``amax`` fills the clip, and ``following``'s input scale to match."""
    bound = following.safe_input_bound(amax)
    layer.out_bound.fill_(bound)
    layer.out_scale.copy_(torch.where(amax > 0, amax / bound, torch.ones_like(amax)).float())
    following.in_scale.copy_(layer.out_scale)


def _nchw_to_int16(x: Tensor, bound: int) -> Tensor:
    return x.clamp(-bound, bound).to(torch.int16).permute(0, 2, 3, 1).contiguous()


class IntegerHyperSynthesis(nn.Module):
    """The hyper-synthesis of a HyperpriorCodec (ConvTranspose2d 5x5/2, LeakyReLU, ConvTranspose2d
    5x5/2, LeakyReLU, Conv2d 3x3) as an integer network: hyper-latents z (integers) -> means and
    scales [B, 2M, 4h, 4w], int32 in units of 2^-OUTPUT_FRAC_BITS."""

    def __init__(self, N: int, M: int):
        super().__init__()
        mid = M * 3 // 2
        self.layers = nn.ModuleList([
            IntegerConvTranspose2d(N, M, 5, 2, 2, 1, activation="leaky_relu"),
            IntegerConvTranspose2d(M, mid, 5, 2, 2, 1, activation="leaky_relu"),
            IntegerConv2d(mid, 2 * M, 3, padding=1, fixed_output=True),
        ])
        for layer, following in zip(self.layers[:-1], self.layers[1:]):
            layer.out_bound.fill_(activation_bound(following.fan_in))
        self.layers[-1].out_scale.fill_(2.0 ** -OUTPUT_FRAC_BITS)
        self.register_buffer("in_bound", torch.tensor(activation_bound(self.layers[0].fan_in)))  # z's clip

    def forward(self, z: Tensor) -> Tensor:
        """Float (fake-quantized) means and scales [B, 2M, 4h, 4w] of hyper-latents z [B, N, h, w]
        (rounded to integers here, straight-through, as the integer network reads them)."""
        x = fake_quant(z, torch.ones(z.shape[1], device=z.device), self.in_bound)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_int(self, z: Tensor) -> Tensor:
        """int32 [B, 2M, 4h, 4w] means and scales (units of 2^-OUTPUT_FRAC_BITS) of integer z [B, N, h, w]."""
        bound = int(self.in_bound)
        x = _nchw_to_int16(z, bound)
        for layer in self.layers:
            x, bound = layer.forward_int(x, x_max=bound), int(layer.out_bound)
        return x.permute(0, 3, 1, 2)

    @classmethod
    @torch.no_grad()
    def from_float(cls, h_s: nn.Sequential, z_samples: Sequence[Tensor]) -> "IntegerHyperSynthesis":
        """The integer network of a trained float ``h_s`` (HyperpriorCodec.h_s), its weights copied
        and every activation's scale calibrated so that the largest value it takes on ``z_samples``
        (hyper-latents [B, N, h, w] of representative images at every quality) fills its clip."""
        convs = [h_s[0], h_s[2], h_s[4]]
        net = cls(convs[0].in_channels, convs[0].out_channels)
        for layer, conv in zip(net.layers, convs):
            layer.load_float(conv)
        outputs = [[] for _ in convs[:-1]]
        for z in z_samples:
            x = z.to(convs[0].weight)
            for i, conv in enumerate(convs[:-1]):
                x = F.leaky_relu(conv(x), LEAKY_SLOPE)
                outputs[i].append(x)
        net.in_bound.fill_(net.layers[0].safe_input_bound(torch.ones(net.layers[0].in_channels)))
        for i, out in enumerate(outputs):
            _calibrate(net.layers[i], _channel_max(out), net.layers[i + 1])
        return net.to(convs[0].weight.device)


class IntegerCheckerboardContext(nn.Module):
    """The context network of a CheckerboardCodec (fastae.models.codec.CheckerboardContext: a 5x5
    convolution of the decoded anchors, then two 1x1 convolutions over the hyperprior's means and
    scales and that context, added to them) as an integer network over the integer hyper output.

    In integers each pass computes only the positions it decides: the anchors' pass (no anchors
    yet) only the anchors (i + j even), the second pass only the others, whose 5x5 window reads
    only anchors (12 of 25 taps): each position's 1x1 layers run once, the 5x5 a quarter of the
    dense work."""

    def __init__(self, M: int):
        super().__init__()
        self.M = M
        self.context = IntegerConv2d(M, M, 5, padding=2)
        self.params = nn.ModuleList([IntegerConv2d(3 * M, 2 * M, 1, activation="leaky_relu"),
                                     IntegerConv2d(2 * M, 2 * M, 1, fixed_output=True)])
        self.anchor_plan = conv_plan(5, 2, parity=1, input_parity=0)  # the second pass's 5x5
        self.pass_plans = (conv_plan(1, 0, parity=0), conv_plan(1, 0, parity=1))  # the 1x1 layers of each pass
        self.params[1].out_scale.fill_(2.0 ** -OUTPUT_FRAC_BITS)
        # the clips of the anchors (the 5x5's input) and of the 1x1 layers' input (hyper and context)
        self.register_buffer("anchor_bound", torch.tensor(activation_bound(self.context.fan_in)))
        self.context.out_bound.fill_(activation_bound(self.params[0].fan_in))
        self.params[0].out_bound.fill_(activation_bound(self.params[1].fan_in))

    def _hyper_scale(self):
        return self.params[0].in_scale[:2 * self.M]

    def forward(self, hyper: Tensor, anchors: Tensor = None) -> Tensor:
        """Float (fake-quantized) means and scales [B, 2M, h, w], as CheckerboardContext.forward: of
        the anchors when ``anchors`` is None, else of the other latents given ``anchors`` (the
        decoded latents, zero off the anchors)."""
        h = fake_quant(hyper, self._hyper_scale(), self.context.out_bound)
        if anchors is None:
            ctx = hyper.new_zeros(hyper.shape[0], self.M, *hyper.shape[2:])
        else:
            ctx = self.context(fake_quant(anchors, self.context.in_scale, self.anchor_bound))
        return hyper + self.params[1](self.params[0](torch.cat([h, ctx], dim=1)))

    @staticmethod
    def _requantize(x: Tensor, scale: Tensor, bound: int) -> Tensor:
        """int32 values in units of 2^-OUTPUT_FRAC_BITS -> int16 steps of ``scale`` clipped to +-bound."""
        mult, shift = quantize_multiplier(2.0 ** -OUTPUT_FRAC_BITS / scale.double().cpu())
        mult, shift = mult.to(x.device), shift.to(x.device)
        return rescale(x, torch.stack([mult, mult]), shift, -bound, bound, torch.int16)

    def _correction(self, inputs: Tensor, aq: Optional[Tensor]) -> Tensor:
        """One pass's correction of the hyper output: int32 [B, h, w, 2M] at the pass's positions,
        zero at the others (the plans compute only the pass's positions). ``inputs`` int16
        [B, h, w, 3M]: the hyper output's steps, then room for the context, which this pass writes
        (zero in the first pass, the 5x5 of the anchors' steps ``aq`` [B, h, w, M] in the second)."""
        second = aq is not None
        if second:
            inputs[..., 2 * self.M:] = self.context.forward_int(aq, self.anchor_plan, x_max=int(self.anchor_bound))
        else:
            inputs[..., 2 * self.M:] = 0
        plan = self.pass_plans[int(second)]
        p = self.params[0].forward_int(inputs, plan, x_max=int(self.context.out_bound))
        return self.params[1].forward_int(p, plan, x_max=int(self.params[0].out_bound))

    def two_pass_int(self, hyper: Tensor, anchor_values):
        """The integer two passes, in CheckerboardContext.two_pass's order: ``hyper`` int32
        [B, 2M, h, w] from IntegerHyperSynthesis.forward_int; ``anchor_values(means, scales)`` gets the
        first pass's int32 means and scales [B, M, h, w] (units of 2^-OUTPUT_FRAC_BITS; the anchors'
        are final) and returns the latents minus those means, rounded (integers [B, M, h, w]), of which
        only the anchors are read. Returns (int32 means and scales [B, 2M, h, w] of every latent, what
        anchor_values returned).

        Each position's output is hyper plus its own pass's correction, saturated to int32 (int64
        sums, clamped): the first pass's corrections are zero off the anchors and the second's on
        them, so hyper + both corrections is each position's sum."""
        h = hyper.permute(0, 2, 3, 1).contiguous()  # channels last: a view of what forward_int gives
        inputs = h.new_empty(*h.shape[:3], 3 * self.M, dtype=torch.int16)
        inputs[..., :2 * self.M] = self._requantize(h, self._hyper_scale(), int(self.context.out_bound))
        p1 = self._correction(inputs, None)
        first = add_clamp(h, p1, _OUT_LIMIT)
        means, scales = first.permute(0, 3, 1, 2).split(self.M, dim=1)
        values = anchor_values(means, scales)
        # the decoded anchors (the others are never read: the second pass's 5x5 reads anchors only)
        anchors = (values.long().permute(0, 2, 3, 1) << OUTPUT_FRAC_BITS).add_(first[..., :self.M])
        aq = self._requantize(anchors, self.context.in_scale, int(self.anchor_bound))
        p2 = self._correction(inputs, aq)
        out = add_clamp(h, p1.add_(p2), _OUT_LIMIT)  # p1 and p2 have disjoint supports: no overflow
        return out.permute(0, 3, 1, 2), values

    @classmethod
    @torch.no_grad()
    def from_float(cls, ctx: nn.Module, hyper_samples: Sequence[Tensor],
                   anchor_samples: Sequence[Tensor]) -> "IntegerCheckerboardContext":
        """The integer network of a trained float CheckerboardContext ``ctx``, weights copied and
        activation scales calibrated on ``hyper_samples`` (its input: h_s outputs [B, 2M, h, w]) and
        ``anchor_samples`` (the decoded anchors of the same images, zero elsewhere, [B, M, h, w])."""
        net = cls(ctx.context.in_channels)
        net.context.load_float(ctx.context)
        net.params[0].load_float(ctx.params[0])
        net.params[1].load_float(ctx.params[2])
        ctx_out, hidden = [], []
        for hyper, anchors in zip(hyper_samples, anchor_samples):
            c = ctx.context(anchors.to(ctx.context.weight))
            ctx_out.append(c)
            for x in (torch.cat([hyper, torch.zeros_like(c)], 1), torch.cat([hyper, c], 1)):
                hidden.append(F.leaky_relu(ctx.params[0](x.to(ctx.context.weight)), LEAKY_SLOPE))
        anchor_amax = _channel_max(anchor_samples)
        net.anchor_bound.fill_(net.context.safe_input_bound(anchor_amax))
        net.context.in_scale.copy_((anchor_amax / int(net.anchor_bound)).where(anchor_amax > 0, 1.0).float())
        # the 1x1 layers read hyper and context as one input: one clip (the context's), per-channel scales
        params_amax = torch.cat([_channel_max(hyper_samples), _channel_max(ctx_out)])
        bound = net.params[0].safe_input_bound(params_amax)
        net.context.out_bound.fill_(bound)
        net.params[0].in_scale.copy_((params_amax / bound).where(params_amax > 0, 1.0).float())
        net.context.out_scale.copy_(net.params[0].in_scale[2 * net.M:])
        _calibrate(net.params[0], _channel_max(hidden), net.params[1])
        return net.to(ctx.context.weight.device)


def scale_table_index(scales: Tensor, thresholds: Tensor) -> Tensor:
    """int32 table index of each latent from its integer ``scales`` (units of 2^-OUTPUT_FRAC_BITS):
    the number of ``thresholds`` (float64, non-decreasing, as the codec's Gaussian tables carry)
    below the scale, as ``torch.searchsorted(thresholds, scale)`` counts for a real scale.
    floor(t * 2^F) < S exactly when t < S / 2^F for an integer S, and scaling by a power of two and
    flooring are exact, so the index is an integer function of integers on every device."""
    limits = torch.floor(thresholds.double() * 2.0 ** OUTPUT_FRAC_BITS).long()
    return torch.searchsorted(limits.to(scales.device), scales.long().contiguous()).to(torch.int32)
