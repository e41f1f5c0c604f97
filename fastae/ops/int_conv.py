"""``int_conv2d``: a convolution in integer arithmetic, for the entropy networks that choose the
codec's probability tables (Ballé, Johnston & Minnen, ICLR 2019, "Integer networks for data
compression with latent-variable models").

Integers throughout: activations int16 with values in [-16384, 16383] (15 bits, so that two int8
halves carry them through int8 tensor cores), weights int8 in [-127, 127], int32 accumulation
and an int32 bias, then a rescaling by an integer multiplier and a shift, rounded half up,

    out = clamp((acc * m + 2^(shift-1)) >> shift, lo, hi),   m = mult[0] where acc >= 0 else mult[1]

(mult[1] != mult[0] makes a leaky ReLU, 0 a ReLU; lo and hi clip the activation). Before
anything runs, ``sum |x| |w| + |bias|`` is bounded below 2^31 from max |x| and the weights, so no
partial sum can overflow and every backend gets the same integers in any summation order: the
C++ kernels (csrc/int_conv*.cpp: baseline, AVX2, AVX-512 and AVX-512 VNNI builds of one kernel,
picked at run time or forced with ``isa``), Triton (kernels/int_conv.py), CUDA (csrc/cuda/int_conv.cu) and the
torch oracle (float64 products and sums of integers below 2^53 are exact).

Tensors are channels-last: x ``[N, H, W, Cin]``, the output ``[N, Ho, Wo, Cout]``. One
primitive serves every layer shape through a *plan*: the output grid is split into phases
(py, px) of stride ``so`` (output (so*y + py, so*x + px)), each with its list of taps, input offsets
(dy, dx) read at (si*y + dy, si*x + dx) of the zero-padded input. A stride-1 convolution is one
phase; a transposed convolution of stride 2 is four phases of 2x2 to 3x3 taps (no multiplication
by inserted zeros); a convolution over a checkerboard computes only the outputs of one parity
from the inputs of one parity (half the outputs, half the taps). Outputs no phase covers are 0.
"""

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastae import _native
from fastae.ops import _backend
from fastae.ops._common import plain_eager

ACT_MIN, ACT_MAX = -(1 << 14), (1 << 14) - 1  # int16 activations of 15 bits
WEIGHT_MAX = 127  # int8 weights, symmetric
ACC_LIMIT = 1 << 31  # sum |x| |w| + |bias| must stay below it
MULT_LIMIT = 1 << 21  # multipliers below it: the C++ kernels rescale in double, exactly (v * m < 2^52)
ISAS = ("baseline", "avx2", "avx512", "avx512vnni")  # the C++ kernel's instruction-set builds (isa=None: the best this CPU has)


@dataclass(frozen=True)
class Plan:
    """Which inputs each output of an integer convolution reads.

    ``taps``: (ky, kx, dy, dx) per tap: the weight's kernel index and the input offset, relative to
    (si*y, si*x) of the unpadded input, of output (so*y + py, so*x + px); ``phases``: (py, px,
    first tap, end tap) per phase; ``si``, ``so``: input and output strides of the phase grids;
    ``transposed``: the weight is [Cin, Cout, kh, kw] (ConvTranspose2d) rather than [Cout, Cin, kh, kw];
    ``out_size``: (scale, offset): an input of n rows or columns gives scale * n + offset."""

    taps: tuple
    phases: tuple
    si: int
    so: int
    transposed: bool
    out_size: tuple
    kernel: int

    def output_shape(self, h: int, w: int) -> tuple:
        a, b = self.out_size
        return a * h + b, a * w + b


def _parity_phases(so, parity):
    return [(py, px) for py in range(so) for px in range(so) if parity is None or (py + px) % 2 == parity]


@functools.lru_cache(maxsize=None)
def conv_plan(kernel: int, padding: int = 0, parity: Optional[int] = None,
              input_parity: Optional[int] = None) -> Plan:
    """A stride-1 ``kernel`` x ``kernel`` convolution with zero ``padding`` (nn.Conv2d). With
    ``parity`` (0 or 1) only the outputs at (i, j) with (i + j) % 2 == parity are computed (the
    others are 0); with ``input_parity`` only the inputs of that parity are read (the others must
    be zero, e.g. the anchors of a checkerboard), which skips the taps that would read only zeros."""
    if parity is None and input_parity is not None:
        raise ValueError("conv_plan: input_parity needs an output parity")
    so = 1 if parity is None else 2
    taps, phases = [], []
    for py, px in _parity_phases(so, parity):
        first = len(taps)
        for ky in range(kernel):
            for kx in range(kernel):
                dy, dx = py + ky - padding, px + kx - padding
                if input_parity is None or (dy + dx) % 2 == input_parity:
                    taps.append((ky, kx, dy, dx))
        phases.append((py, px, first, len(taps)))
    return Plan(tuple(taps), tuple(phases), so, so, False, (1, 2 * padding - kernel + 1), kernel)


@functools.lru_cache(maxsize=None)
def conv_transpose_plan(kernel: int, stride: int, padding: int, output_padding: int) -> Plan:
    """nn.ConvTranspose2d(kernel, stride, padding, output_padding): output o = stride * i - padding + k
    sums input i with kernel index k, so phase p = o % stride reads i = o // stride + (p + padding - k) / stride
    for the k with (p + padding - k) % stride == 0."""
    taps, phases = [], []
    for py in range(stride):
        for px in range(stride):
            first = len(taps)
            for ky in range(kernel):
                for kx in range(kernel):
                    if (py + padding - ky) % stride == 0 and (px + padding - kx) % stride == 0:
                        taps.append((ky, kx, (py + padding - ky) // stride, (px + padding - kx) // stride))
            phases.append((py, px, first, len(taps)))
    return Plan(tuple(taps), tuple(phases), 1, stride, True, (stride, kernel - stride - 2 * padding + output_padding),
                kernel)


def _phase_grid(plan, phase, out_h, out_w):
    py, px = phase[:2]
    return -(-(out_h - py) // plan.so), -(-(out_w - px) // plan.so)


def _padding(plan, h, w):
    """(top, bottom, left, right) zero rows and columns that keep every read of the plan inside the input."""
    out_h, out_w = plan.output_shape(h, w)
    top = bottom = left = right = 0
    for phase in plan.phases:
        ny, nx = _phase_grid(plan, phase, out_h, out_w)
        for _, _, dy, dx in plan.taps[phase[2]:phase[3]]:
            if ny > 0 and nx > 0:
                top, left = max(top, -dy), max(left, -dx)
                bottom = max(bottom, plan.si * (ny - 1) + dy - (h - 1))
                right = max(right, plan.si * (nx - 1) + dx - (w - 1))
    return top, bottom, left, right


def _tap_weights(plan, weight):
    """int8 [T, Cin, Cout]: the weight of each tap."""
    k = plan.kernel
    w = weight.permute(2, 3, 0, 1) if plan.transposed else weight.permute(2, 3, 1, 0)  # [k, k, Cin, Cout]
    index = torch.tensor([ky * k + kx for ky, kx, _, _ in plan.taps], dtype=torch.long, device=weight.device)
    return w.reshape(k * k, *w.shape[2:]).index_select(0, index)


def _pack(taps_w):
    """int8 [T, Cin, Cout] -> [T, ceil(Cin / 2), Cout rounded up to 16, 2]: the weights of a pair of input
    channels side by side (the CPU kernels multiply pairs), zeros in the padding."""
    t, cin, cout = taps_w.shape
    packed = taps_w.new_zeros(t, (cin + 1) // 2, -(-cout // 16) * 16, 2)
    padded = torch.nn.functional.pad(taps_w, (0, 0, 0, cin % 2))
    packed[:, :, :cout] = padded.reshape(t, (cin + 1) // 2, 2, cout).transpose(2, 3)
    return packed


def _unpack(packed, cout):
    """The inverse of _pack (with the zero channel of an odd Cin): int8 [T, Cin, Cout]."""
    t, cin2 = packed.shape[:2]
    return packed[:, :, :cout].transpose(2, 3).reshape(t, 2 * cin2, cout)


@dataclass(frozen=True)
class IntConvLayer:
    """Everything of an integer convolution but its input, checked once: ``make`` builds it.

    ``weight``: int8 [T, ceil(Cin / 2), Cout16, 2] packed per tap (``_pack``); ``bias`` int32 [Cout];
    ``mult`` int32 [2, Cout]; ``shift`` int32 [Cout]; ``lo``/``hi`` the output clip; ``out_dtype``
    int16 or int32; ``gain``: the largest sum of |weights| of an output (over its phase's taps), so
    that max |x| * gain + max |bias| bounds every accumulator."""

    plan: Plan
    weight: Tensor
    bias: Tensor
    mult: Tensor
    shift: Tensor
    lo: int
    hi: int
    out_dtype: torch.dtype
    cin: int
    cout: int
    gain: int
    bias_max: int

    @staticmethod
    def make(weight: Tensor, bias: Tensor, mult: Tensor, shift: Tensor, plan: Plan, lo: int, hi: int,
             out_dtype: torch.dtype = torch.int16) -> "IntConvLayer":
        """The layer of int8 ``weight`` [Cout, Cin, k, k] ([Cin, Cout, k, k] for a transposed plan) in
        [-127, 127]; int32 ``bias`` [Cout] in accumulator units; int32 ``mult`` [2, Cout] in [0, 2^21):
        the multipliers of non-negative and of negative accumulators; int32 ``shift`` [Cout] in [1, 40];
        the clip ``lo``..``hi`` within ``out_dtype`` (torch.int16 for an activation of the next layer,
        torch.int32)."""
        if weight.dtype != torch.int8 or weight.dim() != 4 or tuple(weight.shape[2:]) != (plan.kernel, plan.kernel):
            raise TypeError(f"int_conv2d: expected an int8 weight [.., .., {plan.kernel}, {plan.kernel}], got "
                            f"{weight.dtype} {list(weight.shape)}")
        cin, cout = (weight.shape[0], weight.shape[1]) if plan.transposed else (weight.shape[1], weight.shape[0])
        for name, t, shape in (("bias", bias, (cout,)), ("mult", mult, (2, cout)), ("shift", shift, (cout,))):
            if t.dtype != torch.int32 or tuple(t.shape) != shape:
                raise TypeError(f"int_conv2d: expected {name} int32 {list(shape)}, got {t.dtype} {list(t.shape)}")
            if t.device != weight.device:
                raise ValueError(f"int_conv2d: expected {name} on {weight.device} like the weight, got {t.device}")
        if out_dtype not in (torch.int16, torch.int32):
            raise TypeError(f"int_conv2d: out_dtype must be torch.int16 or torch.int32, got {out_dtype}")
        info = torch.iinfo(out_dtype)
        if not info.min <= lo <= hi <= info.max:
            raise ValueError(f"int_conv2d: expected {info.min} <= lo <= hi <= {info.max} for {out_dtype}, got "
                             f"lo={lo}, hi={hi}")
        if weight.numel() and (int(weight.min()) < -WEIGHT_MAX or int(weight.max()) > WEIGHT_MAX):
            raise ValueError(f"int_conv2d: weights must lie in [-{WEIGHT_MAX}, {WEIGHT_MAX}], got "
                             f"[{int(weight.min())}, {int(weight.max())}]")
        if cout and not (int(mult.min()) >= 0 and int(mult.max()) < MULT_LIMIT and int(shift.min()) >= 1
                         and int(shift.max()) <= 40):
            raise ValueError("int_conv2d: expected multipliers in [0, 2^21) and shifts in [1, 40]")
        taps_w = _tap_weights(plan, weight)
        sums = [taps_w[t0:t1].long().abs().sum((0, 1)) for _, _, t0, t1 in plan.phases if t1 > t0]
        gain = int(torch.stack(sums).max()) if sums and cout else 0  # an output sums one phase's taps
        bias_max = int(bias.abs().max()) if cout else 0
        return IntConvLayer(plan, _pack(taps_w).contiguous(), bias.contiguous(), mult.contiguous(),
                            shift.contiguous(), int(lo), int(hi), out_dtype, int(cin), int(cout), gain, bias_max)

    def to(self, device) -> "IntConvLayer":
        """The layer with its tensors on ``device``."""
        return dataclasses.replace(self, weight=self.weight.to(device), bias=self.bias.to(device),
                                   mult=self.mult.to(device), shift=self.shift.to(device))


# ---------------------------------------------------------------------------------------------
# torch backend: the oracle


def requantize(acc: Tensor, mult: Tensor, shift: Tensor, lo: int, hi: int, dtype: torch.dtype) -> Tensor:
    """clamp((acc * m + 2^(shift-1)) >> shift, lo, hi) in int64 over the last dim (channels), m =
    mult[0] where acc >= 0 else mult[1]: the rescaling every backend applies, exact in torch on
    any device. acc: int64 (or integer-valued float64) [..., C]; mult int32 [2, C]; shift int32 [C]."""
    v = acc.to(torch.int64, copy=True)
    s = shift.long()
    if torch.equal(mult[0], mult[1]):
        v.mul_(mult[0].long())
    else:
        v = v * torch.where(v >= 0, mult[0].long(), mult[1].long())
    return v.add_(torch.ones_like(s) << (s - 1)).bitwise_right_shift_(s).clamp_(lo, hi).to(dtype)


def _native_cpu(op: str, *tensors) -> bool:
    """Whether fastae._C's CPU kernel ``op`` takes ``tensors`` here: CPU tensors, plain eager, the C++
    backend in use (``fastae.ops.backend("torch")`` keeps the torch formulas)."""
    return all(t.device.type == "cpu" for t in tensors) and plain_eager(*tensors) and \
        _backend.resolve(tensors[0].device) == "cpu" and _native.has_kernel(op, "CPU")


def rescale(acc: Tensor, mult: Tensor, shift: Tensor, lo: int, hi: int, dtype: torch.dtype) -> Tensor:
    """``requantize`` on the fastest path: fastae._C's one-pass kernel on a CPU (int32 or int64
    ``acc``), else the torch formula; the same integers."""
    if acc.dtype in (torch.int32, torch.int64) and _native_cpu("int_requantize", acc, mult, shift):
        return torch.ops.fastae_C.int_requantize(acc, mult.to(torch.int32), shift.to(torch.int32), lo, hi, dtype)
    return requantize(acc, mult, shift, lo, hi, dtype)


def add_clamp(a: Tensor, b: Tensor, limit: int) -> Tensor:
    """int32 ``clamp(a + b, -limit, limit)`` of int32 ``a`` and ``b`` of one shape, the sum exact
    (int64): fastae._C's one-pass kernel on a CPU, else torch."""
    if _native_cpu("int_add_clamp", a, b):
        return torch.ops.fastae_C.int_add_clamp(a, b, limit)
    return (a.long() + b).clamp_(-limit, limit).int()


def _torch_int_conv(x, weight, bias, mult, shift, taps, phases, si, so, out_h, out_w, lo, hi, out_dtype):
    n, cout = x.shape[0], bias.shape[0]
    out = torch.zeros(n, out_h, out_w, cout, dtype=out_dtype, device=x.device)
    xd, wd = x.double(), _unpack(weight, cout).double()
    for py, px, t0, t1 in phases:
        ny, nx = -(-(out_h - py) // so), -(-(out_w - px) // so)
        if ny <= 0 or nx <= 0:
            continue
        acc = bias.double().expand(n, ny, nx, -1).clone()
        for t in range(t0, t1):
            dy, dx = taps[t]
            acc += xd[:, dy:dy + si * (ny - 1) + 1:si, dx:dx + si * (nx - 1) + 1:si] @ wd[t]
        out[:, py::so, px::so] = requantize(acc.long(), mult, shift, lo, hi, out_dtype)
    return out


def _native_int_conv(x, weight, bias, mult, shift, taps, phases, si, so, out_h, out_w, lo, hi, out_dtype, isa):
    taps_t = torch.tensor([v for tap in taps for v in tap], dtype=torch.int32).reshape(-1, 2)
    phases_t = torch.tensor([v for p in phases for v in p], dtype=torch.int32).reshape(-1, 4)
    return torch.ops.fastae_C.int_conv(x, weight, bias, mult, shift, taps_t.to(x.device), phases_t.to(x.device), si,
                                       so, out_h, out_w, lo, hi, out_dtype, isa)


def _triton_int_conv(x, weight, bias, mult, shift, taps, phases, si, so, out_h, out_w, lo, hi, out_dtype, isa):
    from fastae.kernels import int_conv as kernels

    return kernels.int_conv(x, weight, bias, mult, shift, taps, phases, si, so, out_h, out_w, lo, hi, out_dtype)


_INT_CONV = {"cpu": _native_int_conv, "cuda": _native_int_conv, "triton": _triton_int_conv}

# ---------------------------------------------------------------------------------------------
# the primitive


@torch.library.custom_op("fastae::int_conv", mutates_args=())
def int_conv(x: Tensor, weight: Tensor, bias: Tensor, mult: Tensor, shift: Tensor, taps: list[int],
             phases: list[int], si: int, so: int, out_h: int, out_w: int, lo: int, hi: int,
             out_dtype: torch.dtype, backend: str, isa: int) -> Tensor:
    """The plan's convolution of a zero-padded int16 x [N, Hp, Wp, Cin] (Cin even) with the packed int8
    weight [T, Cin / 2, Cout16, 2]; taps flat (dy, dx) per tap in padded coordinates, phases flat
    (py, px, first tap, end tap) per phase."""
    return _int_conv_impl(x, weight, bias, mult, shift, taps, phases, si, so, out_h, out_w, lo, hi, out_dtype, backend,
                          isa)


def _int_conv_impl(x, weight, bias, mult, shift, taps, phases, si, so, out_h, out_w, lo, hi, out_dtype, backend, isa):
    taps2 = [tuple(taps[i:i + 2]) for i in range(0, len(taps), 2)]
    phases4 = [tuple(phases[i:i + 4]) for i in range(0, len(phases), 4)]
    if backend == "torch":
        return _torch_int_conv(x, weight, bias, mult, shift, taps2, phases4, si, so, out_h, out_w, lo, hi, out_dtype)
    return _INT_CONV[backend](x, weight, bias, mult, shift, taps2, phases4, si, so, out_h, out_w, lo, hi, out_dtype,
                              isa)


@int_conv.register_fake
def _(x, weight, bias, mult, shift, taps, phases, si, so, out_h, out_w, lo, hi, out_dtype, backend, isa):
    return x.new_empty((x.shape[0], out_h, out_w, bias.shape[0]), dtype=out_dtype)


# ---------------------------------------------------------------------------------------------
# the public op


def int_conv2d(x: Tensor, layer: IntConvLayer, isa: Optional[str] = None, x_max: Optional[int] = None) -> Tensor:
    """An integer convolution (see the module docstring): ``layer`` (``IntConvLayer.make``) of ``x``.

    Args:
        x: int16 ``[N, H, W, Cin]`` (channels last), values in [ACT_MIN, ACT_MAX], on the layer's device.
        layer: the weights, bias, rescaling, clip and plan.
        isa: with the C++ backend, run its ``baseline``, ``avx2``, ``avx512`` or ``avx512vnni`` build
            (None: the best this CPU has).
        x_max: the caller's guarantee that every |x| <= x_max (at most ACT_MAX), e.g. the clip of the
            layer that made x: the bound is checked against it instead of a scan of x.

    Returns:
        ``[N, Ho, Wo, Cout]`` of ``layer.out_dtype``, the same integers on every backend.

    Raises ValueError when an accumulator could leave int32 (max |x| times the largest sum of
    |weights| of an output, plus max |bias|, at least 2^31).
    """
    if not isinstance(x, Tensor) or x.dtype != torch.int16 or x.dim() != 4 or x.shape[3] != layer.cin:
        raise TypeError(f"int_conv2d: expected x int16 [N, H, W, {layer.cin}] (channels last), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', []))}")
    if x.device != layer.weight.device:
        raise ValueError(f"int_conv2d: expected x on {layer.weight.device} like the layer, got {x.device}")
    if isa is not None and isa not in ISAS:
        raise ValueError(f"int_conv2d: unknown isa {isa!r}; expected one of {ISAS} or None")
    n, h, w, cin = x.shape
    plan = layer.plan
    out_h, out_w = plan.output_shape(h, w)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"int_conv2d: an input of {h} x {w} has no output under this plan")
    if x_max is not None and not 0 <= x_max <= ACT_MAX:
        raise ValueError(f"int_conv2d: x_max must lie in [0, {ACT_MAX}], got {x_max}")
    if x.numel():
        if x_max is None:
            lo, hi = (int(v) for v in torch.aminmax(x))
            if lo < ACT_MIN or hi > ACT_MAX:
                raise ValueError(f"int_conv2d: activations must lie in [{ACT_MIN}, {ACT_MAX}], got [{lo}, {hi}]")
            x_max = max(-lo, hi)
        bound = x_max * layer.gain + layer.bias_max
        if bound >= ACC_LIMIT:
            raise ValueError(f"int_conv2d: an accumulator could reach {bound} >= 2^31 (max |x| = {x_max}, "
                             f"largest sum of |weights| of an output = {layer.gain}, max |bias| = {layer.bias_max})")
    top, bottom, left, right = _padding(plan, h, w)
    pads = (0, cin % 2, left, right, top, bottom)  # a zero channel makes Cin even
    x = F.pad(x, pads).contiguous() if any(pads) else x.contiguous()  # F.pad copies even when it pads nothing
    taps = [v for _, _, dy, dx in plan.taps for v in (dy + top, dx + left)]
    phases = [v for p in plan.phases for v in p]
    args = (x, layer.weight, layer.bias, layer.mult, layer.shift, taps, phases, plan.si, plan.so, out_h, out_w,
            layer.lo, layer.hi, layer.out_dtype, _backend.resolve(x.device), -1 if isa is None else ISAS.index(isa))
    if plain_eager(x):  # the op's function itself: the custom-op machinery costs ~3.6 s (it imports
        return _int_conv_impl(*args)  # torch._dynamo) on a process's first call, and µs on every call
    return int_conv(*args)
