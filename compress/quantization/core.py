"""Fake quantization: the rounding math, the activation / weight quantizer modules and the quantized layers.

The model keeps training in float: every quantized layer reads its float weight at each forward and
fake-quantizes it (round with a straight-through estimator), so the optimizer updates the float
weights and pruning masks applied to them are honoured. Parameter names do not change (layers are
re-classed in place, not wrapped), so schedules, masks and checkpoints keep naming `conv.weight`.

Everything a quantized tensor is mapped to is an integer grid `scale * (q - zero_point)` with `q` in
`[qmin, qmax]`; the INT8 export (compress.quantization.export) writes exactly these grids as
QuantizeLinear / DequantizeLinear. Weight grids are limited to the integer codes every x86 CPU multiplies
exactly (`weight_range`, PORTABLE_WEIGHT_CODE) unless the full int8 grid is asked for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_sum_, global_min_max

#: Attribute set on a tensor that already lies on an activation grid (with the tensor's version then).
TAG = "_compress_qparams"

SCHEMES = ("asym", "sym")
ACT_MODES = ("fixed", "learned", "ema", "calib")
CALIB_CLIPS = ("NONE", "AVG", "N_STD")
WEIGHT_KINDS = ("dorefa", "wrpn", "linear")

#: The largest int8 weight code every x86 CPU multiplies exactly. Without VNNI (AMD before Zen 4, Intel
#: before Cascade Lake), ONNX Runtime's uint8 x int8 kernels add pairs of products in 16 bits with
#: saturation (vpmaddubsw), so 2 * 255 * |code| must stay <= 32767: |code| <= 64.
PORTABLE_WEIGHT_CODE = 32767 // (2 * 255)
#: weight_range -> the largest weight code it allows: "portable" (every x86 CPU) or "full" (VNNI CPUs only)
WEIGHT_RANGES = {"portable": PORTABLE_WEIGHT_CODE, "full": 127}


@dataclass(frozen=True)
class Grid:
    """An integer grid: value = scale * (q - zero_point), q in [qmin, qmax]."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int

    @property
    def lo(self) -> torch.Tensor:
        return (self.qmin - self.zero_point) * self.scale

    @property
    def hi(self) -> torch.Tensor:
        return (self.qmax - self.zero_point) * self.scale


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ONNX QuantizeLinear does) with an identity gradient."""
    return x + (torch.round(x) - x).detach()


class NonFiniteRangeError(ValueError):
    """A quantization range is inf or NaN: the values being quantized overflowed."""


def fake_quant(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Map `x` onto `grid` (saturating, round half to even) with PyTorch's fused kernels.

    The gradient passes straight through where x lies inside the grid's range, and is zero where it
    saturates. A per-channel grid has a scale shaped like [C, 1, ...] (or [1, C, ...]).
    """
    scale = grid.scale.detach().float()
    zero_point = grid.zero_point.detach().round().int()
    if scale.numel() == 1:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero_point.reshape(()),
                                                     grid.qmin, grid.qmax)
    axis = next(d for d, n in enumerate(scale.shape) if n > 1)
    try:
        return torch.fake_quantize_per_channel_affine(x, scale.flatten(), zero_point.flatten(), axis,
                                                      grid.qmin, grid.qmax)
    except RuntimeError as err:  # checked only here: a training step never reads a value back from the device
        if bool(torch.isfinite(grid.scale).all()) and bool(torch.isfinite(grid.zero_point).all()):
            raise
        raise NonFiniteRangeError(
            "a quantization range is not finite: the weights or activations it quantizes overflowed (inf / NaN), "
            "so training has diverged; lower the learning rate (or check the input data) and resume from a "
            "checkpoint written before the divergence") from err


def asym_grid(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> Grid:
    """Asymmetric grid over [min(lo, 0), max(hi, 0)] with 2**bits levels; zero is exact."""
    lo = torch.clamp(lo.detach().float(), max=0.0)
    hi = torch.clamp(hi.detach().float(), min=0.0)
    levels = 2 ** bits - 1
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-lo / scale)
    return Grid(scale, zero_point, 0, levels)


def sym_grid(max_abs: torch.Tensor, bits: int, full_range: bool = False, max_code: int | None = None) -> Grid:
    """Symmetric grid: scale = max_abs / levels, zero point 0, q in +-levels, levels = 2**(bits-1) - 1
    (at most max_code when given: the portable weight grid).

    full_range also allows q = -2**(bits-1) (activations: the whole int8 range, so no extra clip is needed).
    """
    levels = 2 ** (bits - 1) - 1
    if max_code is not None:
        levels = min(levels, max_code)
    max_abs = max_abs.detach().float()
    scale = max_abs / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return Grid(scale, torch.zeros_like(scale), -levels - int(full_range), levels)


def clamp_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Clip `x` to [lo, hi]; lo / hi receive the gradient of the elements clipped to them (PACT)."""
    return torch.minimum(torch.maximum(x, lo), hi)


def tag(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Record on `x` that it lies on `grid` (until it is modified in place)."""
    setattr(x, TAG, (grid, x._version))
    return x


def tagged_grid(x: torch.Tensor) -> Grid | None:
    """The grid `x` was tagged with, if it has not been changed in place since."""
    entry = getattr(x, TAG, None)
    if entry is None or entry[1] != x._version:
        return None
    return entry[0]


class ActQuant(nn.Module):
    """Fake-quantizes activations to `bits` on a range that is fixed, learned, EMA-tracked or calibrated.

    fixed:   [lo, hi] given (DoReFa / WRPN clipped-linear activations).
    learned: [clip_lo, clip_hi] are parameters trained with the network (PACT); clip_lo only when signed.
    ema:     [min, max] tracked with a bias-corrected exponential moving average while training.
    calib:   [min, max] measured on calibration batches (plain min/max, batch average, or mean +- N std).
    """

    def __init__(self, bits: int, mode: str, scheme: str = "asym", lo: float = 0.0, hi: float = 1.0,
                 signed: bool = False, ema_decay: float = 0.999, calib_clip: str = "NONE",
                 num_stds: float | None = None):
        super().__init__()
        if mode not in ACT_MODES or scheme not in SCHEMES or calib_clip not in CALIB_CLIPS:
            raise ValueError(f"bad ActQuant configuration mode={mode} scheme={scheme} clip={calib_clip}")
        self.bits, self.mode, self.scheme, self.signed = bits, mode, scheme, signed
        self.ema_decay, self.calib_clip, self.num_stds = ema_decay, calib_clip, num_stds
        self.enabled = True
        self.calibrating = False
        self.register_buffer("lo", torch.tensor(float(lo)))
        self.register_buffer("hi", torch.tensor(float(hi)))
        self.register_buffer("initialized", torch.tensor(mode in ("fixed", "learned")))
        if mode == "learned":
            self.clip_hi = nn.Parameter(torch.tensor(float(hi)))
            if signed:
                self.clip_lo = nn.Parameter(torch.tensor(float(lo)))
        if mode == "ema":
            self.register_buffer("ema_min", torch.tensor(0.0))
            self.register_buffer("ema_max", torch.tensor(0.0))
            self.register_buffer("ema_steps", torch.tensor(0, dtype=torch.long))
        if mode == "calib":
            # element count, sum, sum of squares; sums of per-batch min / max; global min, max; batches
            self.register_buffer("stats", torch.zeros(8, dtype=torch.float64))
            self.stats[5], self.stats[6] = math.inf, -math.inf

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}, scheme={self.scheme}, signed={self.signed}"

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current clipping range (learned ranges keep their autograd connection)."""
        if self.mode == "learned":
            lo = self.clip_lo if self.signed else torch.zeros_like(self.clip_hi)
            return lo, self.clip_hi
        return self.lo, self.hi

    def grid(self) -> Grid:
        """The grid this quantizer maps onto now."""
        lo, hi = self.bounds()
        if self.scheme == "sym":
            return sym_grid(torch.maximum(lo.detach().abs(), hi.detach().abs()), self.bits, full_range=True)
        return asym_grid(lo, hi, self.bits)

    def _observe(self, x: torch.Tensor) -> None:
        """Update the range (ema) or statistics (calib) with `x`; under DDP with the union of the ranks' `x`."""
        x = x.detach()
        mn, mx = global_min_max(x.min().float(), x.max().float())
        if self.mode == "ema":
            d = self.ema_decay
            self.ema_min.mul_(d).add_((1 - d) * mn)
            self.ema_max.mul_(d).add_((1 - d) * mx)
            self.ema_steps += 1
            correction = 1 - d ** int(self.ema_steps)
            self.lo.copy_(self.ema_min / correction)
            self.hi.copy_(self.ema_max / correction)
            self.initialized.fill_(True)
        else:
            xd = x.double()
            s = self.stats
            s[:3] += all_reduce_sum_(torch.stack([torch.tensor(float(xd.numel()), dtype=torch.float64, device=xd.device),
                                                  xd.sum(), (xd * xd).sum()]))
            s[3] += mn.double()
            s[4] += mx.double()
            s[5] = torch.minimum(s[5], mn.double())
            s[6] = torch.maximum(s[6], mx.double())
            s[7] += 1

    def finish_calibration(self) -> None:
        """Turn the collected statistics into the range (called once the calibration batches are seen)."""
        s = self.stats
        if s[0] == 0:
            return
        batches = s[7]
        if self.calib_clip == "AVG":
            lo, hi = s[3] / batches, s[4] / batches
        elif self.calib_clip == "N_STD":
            mean = s[1] / s[0]
            std = torch.sqrt(torch.clamp(s[2] / s[0] - mean * mean, min=0.0))
            n = float(self.num_stds if self.num_stds is not None else 3.0)
            lo, hi = torch.maximum(mean - n * std, s[5]), torch.minimum(mean + n * std, s[6])
        else:
            lo, hi = s[5], s[6]
        self.lo.fill_(float(lo))
        self.hi.fill_(float(hi))
        self.initialized.fill_(True)

    def quantizes(self) -> bool:
        """Whether forward() maps onto the grid now (on, not calibrating, range known)."""
        return self.enabled and not self.calibrating and bool(self.initialized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.calibrating:
            self._observe(x)
            return x
        if self.mode == "ema" and self.training:
            self._observe(x)
        if not bool(self.initialized):
            return x
        grid = self.grid()
        if self.mode in ("fixed", "learned"):
            lo, hi = self.bounds()
            x = clamp_range(x, lo, hi)  # learned bounds get PACT's gradient here
        return tag(fake_quant(x, grid), grid)


class WeightQuant(nn.Module):
    """Fake-quantizes a weight tensor (no state: the range comes from the float weight at each forward).

    dorefa: tanh-normalized to [0, 1], k-bit, mapped to [-1, 1] (times max|w| with keep_scale, so a layer
            keeps its float magnitude in networks without BatchNorm); 1 bit: sign(w) * mean|w|.
    wrpn:   clipped to [-1, 1], symmetric k-bit.
    linear: symmetric (max |w|) or asymmetric (min..max), per tensor or per output channel.
    Zeros stay exactly zero, so pruned weights remain pruned in the quantized model.

    weight_range "portable" keeps the symmetric grids' integer codes within +-PORTABLE_WEIGHT_CODE (8-bit
    WRPN / linear weights get 129 levels instead of 255; fewer bits are unaffected), so the INT8 model
    is exact on every x86 CPU; "full" uses the whole int8 grid (exact on VNNI CPUs only).
    """

    def __init__(self, bits: int, kind: str, scheme: str = "sym", per_channel: bool = False, axis: int = 0,
                 keep_scale: bool = False, weight_range: str = "portable"):
        super().__init__()
        if kind not in WEIGHT_KINDS or scheme not in SCHEMES or weight_range not in WEIGHT_RANGES:
            raise ValueError(f"bad WeightQuant configuration kind={kind} scheme={scheme} weight_range={weight_range}")
        self.bits, self.kind, self.scheme, self.per_channel, self.axis = bits, kind, scheme, per_channel, axis
        self.keep_scale, self.weight_range = keep_scale, weight_range

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, kind={self.kind}, scheme={self.scheme}, per_channel={self.per_channel}, "
                f"keep_scale={self.keep_scale}, weight_range={self.weight_range}")

    @property
    def max_code(self) -> int:
        """The largest int8 code the exported weight may use (PORTABLE_WEIGHT_CODE or 127)."""
        return WEIGHT_RANGES[self.weight_range]

    @property
    def levels(self) -> int:
        """Positive levels of the symmetric WRPN / linear grid (2**(bits-1) - 1, at most max_code to 8 bits)."""
        full = 2 ** (self.bits - 1) - 1
        return min(full, self.max_code) if self.bits <= 8 else full

    @property
    def exact_in_int8(self) -> bool:
        """Whether this grid's values are int8 codes within max_code times a per-channel scale.

        DoReFa's k-bit grid has 2**k levels and no zero (odd codes up to 2**k - 1: k <= 6 portable, 7 full),
        1-bit DoReFa is +-1; symmetric WRPN / linear grids up to 8 bits are; asymmetric weights
        (a zero point per channel) and wider grids are not, and are re-rounded at export.
        """
        if self.kind == "dorefa":
            return self.bits == 1 or 2 ** self.bits - 1 <= self.max_code
        return self.bits <= 8 and (self.kind == "wrpn" or self.scheme == "sym")

    def _reduce(self, w: torch.Tensor, fn: str) -> torch.Tensor:
        if not self.per_channel:
            return getattr(w, fn)()
        dims = [d for d in range(w.dim()) if d != self.axis]
        out = w.amax(dims, keepdim=True) if fn == "max" else w.amin(dims, keepdim=True)
        return out

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        k = self.bits
        if self.kind == "dorefa":
            if k == 1:
                e = w.detach().abs().mean()
                wq = w + (torch.sign(w.detach()) * e - w).detach()
            else:
                t = torch.tanh(w)
                t = t / (2 * t.detach().abs().max().clamp(min=1e-12)) + 0.5
                levels = 2 ** k - 1
                wq = 2 * round_ste(t * levels) / levels - 1
                if self.keep_scale:
                    wq = wq * w.detach().abs().max()
        elif self.kind == "wrpn":
            wq = fake_quant(torch.clamp(w, -1.0, 1.0), sym_grid(torch.ones((), device=w.device), k,
                                                                max_code=self.levels))
        elif self.scheme == "sym":
            wq = fake_quant(w, sym_grid(self._reduce(w.detach().abs(), "max"), k, max_code=self.levels))
        else:
            wd = w.detach()
            wq = fake_quant(w, asym_grid(self._reduce(wd, "min"), self._reduce(wd, "max"), k))
        return torch.where(w.detach() == 0, torch.zeros_like(wq), wq)

    def code_scale(self, wq: torch.Tensor, axis: int) -> torch.Tensor:
        """Per-channel scale (float32, along `axis`) that puts the fake-quantized weight `wq` on int8 codes.

        Exact grids (see exact_in_int8) keep their own step; the others get max|w| / max_code per
        channel, the grid the export re-rounds them to. Tensor math only (no host synchronisation), so
        training can put the bias on input_scale x weight_scale at every step.
        """
        wq = wq.detach()
        dims = [d for d in range(wq.dim()) if d != axis]
        channels = wq.shape[axis]
        max_abs = wq.abs().amax(dims) if dims else wq.abs()
        k = self.bits
        if self.kind == "dorefa" and k == 1:
            scale = wq.abs().amax().expand(channels)
        elif self.kind == "dorefa" and self.exact_in_int8:
            top = wq.abs().amax() if self.keep_scale else torch.ones((), device=wq.device)
            scale = (top / (2 ** k - 1)).expand(channels)
        elif self.kind == "wrpn" and self.exact_in_int8:
            scale = torch.full((channels,), 1.0 / self.levels, device=wq.device)
        elif self.exact_in_int8:
            scale = (max_abs if self.per_channel else max_abs.amax().expand(channels)) / self.levels
        else:
            scale = max_abs / self.max_code
        return torch.where(scale > 0, scale, torch.ones_like(scale)).float().contiguous()


def quantize_bias(bias: torch.Tensor, in_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """Bias on the int32 grid of scale in_scale * w_scale (per output channel), as the integer kernel adds it."""
    scale = (in_scale * w_scale).detach()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return bias + (torch.round(bias.detach() / scale) * scale - bias).detach()


class QuantLayer:
    """Shared forward logic of the quantized Conv2d / ConvTranspose2d / Linear classes.

    Attributes attached by the quantizer: weight_quant (WeightQuant or None), input_quant and
    output_quant (ActQuant or None), bias_bits (None: float bias; 0: the int32 grid in_scale * w_scale
    that integer kernels add; k > 0: k bits symmetric) and quant_enabled (fake quantization on or off).
    The input is quantized by input_quant only when it does not already lie on a grid (i.e. it does not
    come straight from a quantized activation).
    """

    weight_axis = 0
    quant_enabled = True
    weight_quant: WeightQuant | None
    input_quant: ActQuant | None
    output_quant: ActQuant | None
    bias_bits: int | None

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid | None]:
        """The layer's input on its grid (input_quant, unless it already lies on one) and that grid."""
        grid = tagged_grid(x)
        if grid is None and self.input_quant is not None:
            x = self.input_quant(x)
            grid = tagged_grid(x)
        return x, grid

    def _quant_args(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if not self.quant_enabled:
            return x, self.weight, self.bias
        x, grid = self.quantize_input(x)
        w, b = self.weight, self.bias
        w_scale = None
        if self.weight_quant is not None:
            w = self.weight_quant(w)
            w_scale = self.weight_quant.code_scale(w, self.weight_axis)
        if b is not None and self.bias_bits is not None:
            if self.bias_bits > 0:
                b = fake_quant(b, sym_grid(b.detach().abs().max(), self.bias_bits))
            elif grid is not None and w_scale is not None:
                b = quantize_bias(b, grid.scale, w_scale)
        return x, w, b

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        if self.quant_enabled and self.output_quant is not None:
            return self.output_quant(y)
        return y


class QuantConv2d(nn.Conv2d, QuantLayer):
    """nn.Conv2d with fake-quantized input, weight, bias and output (same parameter names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w, b = self._quant_args(x)
        return self._out(self._conv_forward(x, w, b))


class QuantConvTranspose2d(nn.ConvTranspose2d, QuantLayer):
    """nn.ConvTranspose2d with fake-quantized input, weight (per tensor), bias and output."""

    weight_axis = 1

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size,
                                              2, self.dilation)
        x, w, b = self._quant_args(x)
        y = F.conv_transpose2d(x, w, b, self.stride, self.padding, output_padding, self.groups, self.dilation)
        return self._out(y)


class QuantLinear(nn.Linear, QuantLayer):
    """nn.Linear with fake-quantized input, weight, bias and output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w, b = self._quant_args(x)
        return self._out(F.linear(x, w, b))


QUANT_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: QuantConv2d, nn.ConvTranspose2d: QuantConvTranspose2d, nn.Linear: QuantLinear,
}


class QuantActivation:
    """Shared forward of quantized activation modules: the float activation, then `act_quant`."""

    quant_enabled = True
    act_quant: ActQuant | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.quant_enabled and self.act_quant is not None:
            y = self.act_quant(y)
        return y


class QuantReLU(QuantActivation, nn.ReLU):
    """ReLU whose output is fake-quantized (unsigned range)."""


class QuantReLU6(QuantActivation, nn.ReLU6):
    """ReLU6 whose output is fake-quantized (unsigned range)."""


class QuantPReLU(QuantActivation, nn.PReLU):
    """PReLU (slope kept in float) whose output is fake-quantized on a signed range."""


class QuantLeakyReLU(QuantActivation, nn.LeakyReLU):
    """LeakyReLU whose output is fake-quantized on a signed range."""


class QuantTanh(QuantActivation, nn.Tanh):
    """Tanh whose output is fake-quantized on [-1, 1]."""


class QuantSigmoid(QuantActivation, nn.Sigmoid):
    """Sigmoid whose output is fake-quantized on [0, 1]."""


#: activation class -> (quantized class, whether its output can be negative, natural output range or None)
QUANT_ACTIVATIONS: dict[type[nn.Module], tuple[type[nn.Module], bool, tuple[float, float] | None]] = {
    nn.ReLU: (QuantReLU, False, None),
    nn.ReLU6: (QuantReLU6, False, (0.0, 6.0)),
    nn.PReLU: (QuantPReLU, True, None),
    nn.LeakyReLU: (QuantLeakyReLU, True, None),
    nn.Tanh: (QuantTanh, True, (-1.0, 1.0)),
    nn.Sigmoid: (QuantSigmoid, False, (0.0, 1.0)),
}


def is_quantized(module: nn.Module) -> bool:
    """Whether `module` is one of the quantized layer or activation classes."""
    return isinstance(module, (QuantLayer, QuantActivation))


def act_quants(model: nn.Module, mode: str | None = None) -> list[ActQuant]:
    """Every activation quantizer in `model` (of range `mode` only, when given)."""
    return [m for m in model.modules() if isinstance(m, ActQuant) and mode in (None, m.mode)]
