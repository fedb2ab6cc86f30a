"""Fake quantization: the rounding math, the activation / weight quantizer modules and the quantized layers.

The model keeps training in float: every quantized layer reads its float weight at each forward and
fake-quantizes it (round with a straight-through estimator), so the optimizer updates the float
weights and pruning masks applied to them are honoured. Parameter names do not change (layers are
re-classed in place, not wrapped), so schedules, masks and checkpoints keep naming `conv.weight`.

Everything a quantized tensor is mapped to is an integer grid `scale * (q - zero_point)` with `q` in
`[qmin, qmax]`; the ONNX exporter writes exactly these grids as QuantizeLinear / DequantizeLinear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Attribute set on a tensor that already lies on an activation grid (with the tensor's version then).
TAG = "_compress_qparams"

SCHEMES = ("asym", "sym")
ACT_MODES = ("fixed", "learned", "ema", "calib")
CALIB_CLIPS = ("NONE", "AVG", "N_STD")
WEIGHT_KINDS = ("dorefa", "wrpn", "linear")


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
    return torch.fake_quantize_per_channel_affine(x, scale.flatten(), zero_point.flatten(), axis,
                                                  grid.qmin, grid.qmax)


def asym_grid(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> Grid:
    """Asymmetric grid over [min(lo, 0), max(hi, 0)] with 2**bits levels; zero is exact."""
    lo = torch.clamp(lo.detach().float(), max=0.0)
    hi = torch.clamp(hi.detach().float(), min=0.0)
    levels = 2 ** bits - 1
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-lo / scale)
    return Grid(scale, zero_point, 0, levels)


def sym_grid(max_abs: torch.Tensor, bits: int, full_range: bool = False) -> Grid:
    """Symmetric grid: scale = max_abs / (2**(bits-1) - 1), zero point 0, q in +-(2**(bits-1) - 1).

    full_range also allows q = -2**(bits-1) (activations: the whole int8 range, so no extra clip is needed).
    """
    levels = 2 ** (bits - 1) - 1
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
        self.export_mode = False
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
        x = x.detach()
        mn, mx = x.min().float(), x.max().float()
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
            s[0] += xd.numel()
            s[1] += xd.sum()
            s[2] += (xd * xd).sum()
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
        if self.export_mode:
            return tag(export_fake_quant(x, grid, self.clip_range(grid)), grid)
        if self.mode in ("fixed", "learned"):
            lo, hi = self.bounds()
            x = clamp_range(x, lo, hi)  # learned bounds get PACT's gradient here
        return tag(fake_quant(x, grid), grid)

    def clip_range(self, grid: Grid) -> tuple[float, float]:
        """The values the output can take: the clip (fixed / learned) intersected with the grid."""
        lo, hi = float(grid.lo), float(grid.hi)
        if self.mode in ("fixed", "learned"):
            b_lo, b_hi = self.bounds()
            lo, hi = max(lo, float(b_lo)), min(hi, float(b_hi))
        return lo, hi


def export_fake_quant(x: torch.Tensor, grid: Grid, clip: tuple[float, float]) -> torch.Tensor:
    """The same mapping written with ops the ONNX exporter turns into Clip + QuantizeLinear/DequantizeLinear.

    Activations travel as uint8: the grid is shifted into [0, 255]; when the values it may take (`clip`)
    are narrower than the uint8 container (fewer bits, or a clip inside the grid) a Clip comes first, so
    the exported values are exactly those of training.
    """
    scale, zp = uint8_grid(grid)
    if needs_clip(grid, clip):
        x = torch.clamp(x, clip[0], clip[1])
    return QuantDequantUint8.apply(x, torch.tensor(scale, dtype=torch.float32),
                                   torch.tensor(zp, dtype=torch.uint8))


def uint8_grid(grid: Grid) -> tuple[float, int]:
    """Scale and uint8 zero point of an activation grid shifted into [0, 255]."""
    levels = grid.qmax - grid.qmin
    if levels > 255:
        raise ValueError(f"an activation grid of {levels + 1} levels does not fit in 8 bits")
    return float(grid.scale), int(grid.zero_point) - grid.qmin


def needs_clip(grid: Grid, clip: tuple[float, float]) -> bool:
    """Whether the values an activation may take (`clip`) are narrower than its uint8 container."""
    scale, zp = uint8_grid(grid)
    return clip[0] > (0 - zp) * scale + scale / 2 or clip[1] < (255 - zp) * scale - scale / 2


class QuantDequantUint8(torch.autograd.Function):
    """ONNX QuantizeLinear -> DequantizeLinear to uint8, computed as ONNX specifies it (x / scale,
    round half to even, saturate), so the PyTorch reference and ONNX Runtime agree value for value."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        zp = zero_point.float()
        return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, scale: Any, zero_point: Any) -> Any:
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero_point), scale, zero_point)


class WeightQuant(nn.Module):
    """Fake-quantizes a weight tensor (no state: the range comes from the float weight at each forward).

    dorefa: tanh-normalized to [0, 1], k-bit, mapped to [-1, 1] (times max|w| with keep_scale, so a layer
            keeps its float magnitude in networks without BatchNorm); 1 bit: sign(w) * mean|w|.
    wrpn:   clipped to [-1, 1], symmetric k-bit.
    linear: symmetric (max |w|) or asymmetric (min..max), per tensor or per output channel.
    Zeros stay exactly zero, so pruned weights remain pruned in the quantized model.
    """

    def __init__(self, bits: int, kind: str, scheme: str = "sym", per_channel: bool = False, axis: int = 0,
                 keep_scale: bool = False):
        super().__init__()
        if kind not in WEIGHT_KINDS or scheme not in SCHEMES:
            raise ValueError(f"bad WeightQuant configuration kind={kind} scheme={scheme}")
        self.bits, self.kind, self.scheme, self.per_channel, self.axis = bits, kind, scheme, per_channel, axis
        self.keep_scale = keep_scale

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, kind={self.kind}, scheme={self.scheme}, per_channel={self.per_channel}, "
                f"keep_scale={self.keep_scale}")

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
            wq = fake_quant(torch.clamp(w, -1.0, 1.0), sym_grid(torch.ones((), device=w.device), k))
        elif self.scheme == "sym":
            wq = fake_quant(w, sym_grid(self._reduce(w.detach().abs(), "max"), k))
        else:
            wd = w.detach()
            wq = fake_quant(w, asym_grid(self._reduce(wd, "min"), self._reduce(wd, "max"), k))
        return torch.where(w.detach() == 0, torch.zeros_like(wq), wq)

    def int8_grid(self, wq: torch.Tensor, axis: int) -> tuple[torch.Tensor, bool]:
        """Per-channel scales that put the fake-quantized weight `wq` on int8, and whether that is exact.

        DoReFa (k <= 7) and WRPN / symmetric linear weights (k <= 8) are exactly representable; other
        grids (DoReFa 8-bit needs 9 bits, asymmetric weights) are re-rounded to symmetric int8.
        """
        wq = wq.detach()
        dims = [d for d in range(wq.dim()) if d != axis]
        channels = wq.shape[axis]
        max_abs = wq.abs().amax(dims)
        k = self.bits
        device = wq.device
        if self.kind == "dorefa" and k == 1:
            scale = wq.abs().max().expand(channels)
        elif self.kind == "dorefa" and k <= 7:
            top = wq.abs().max() if self.keep_scale else torch.ones((), device=device)
            scale = (top / (2 ** k - 1)).expand(channels)
        elif self.kind == "wrpn" and k <= 8:
            scale = torch.full((channels,), 1.0 / (2 ** (k - 1) - 1), device=device)
        elif self.kind == "linear" and self.scheme == "sym" and k <= 8:
            levels = 2 ** (k - 1) - 1
            scale = max_abs / levels if self.per_channel else max_abs.max().expand(channels) / levels
        else:
            scale = max_abs / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale)).float().contiguous()
        shape = [1] * wq.dim()
        shape[axis] = channels
        q = wq / scale.view(shape)
        exact = bool((q - torch.round(q)).abs().max() < 1e-3) and bool(q.abs().max() <= 127.5)
        return scale, exact


class DequantizeConst(torch.autograd.Function):
    """`scale * (q - zero_point)` of an integer constant, exported as one ONNX DequantizeLinear.

    Written as a Function with a symbolic so the ONNX exporter keeps the int8 weight / int32 bias and
    its DequantizeLinear (plain ops on constants would be folded back into a float tensor).
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                axis: int) -> torch.Tensor:
        shape = [1] * q.dim()
        if scale.dim() == 1 and q.dim() > 1:
            shape[axis] = -1
        else:
            shape = list(scale.shape)
        return (q.float() - zero_point.float().view(shape)) * scale.view(shape)

    @staticmethod
    def symbolic(g: Any, q: Any, scale: Any, zero_point: Any, axis: int) -> Any:
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=axis)


def quantize_bias(bias: torch.Tensor, in_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """Bias on the int32 grid of scale in_scale * w_scale (per output channel), as the integer kernel adds it."""
    scale = (in_scale * w_scale).detach()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return bias + (torch.round(bias.detach() / scale) * scale - bias).detach()


class QuantLayer:
    """Shared forward logic of the quantized Conv2d / ConvTranspose2d / Linear classes.

    Attributes attached by the quantizer: weight_quant (WeightQuant or None), input_quant and
    output_quant (ActQuant or None), bias_bits (None: float bias; 0: the int32 grid in_scale * w_scale
    that integer kernels add; k > 0: k bits symmetric). The input is quantized by input_quant only when it does not already lie
    on a grid (i.e. it does not come straight from a quantized activation).
    """

    weight_axis = 0

    def _quant_args(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        enabled = getattr(self, "quant_enabled", True)
        grid = tagged_grid(x)
        if enabled and grid is None and self.input_quant is not None:
            x = self.input_quant(x)
            grid = tagged_grid(x)
        w, b = self.weight, self.bias
        if not enabled:
            return x, w, b
        export = getattr(self, "export_mode", False)
        w_scale = None
        if self.weight_quant is not None:
            if export:
                if getattr(self, "_export_w", None) is None:
                    self.export_exact = self.freeze_for_export(grid)
                w = DequantizeConst.apply(*self._export_w, self.weight_axis)
                if self._export_b is not None:
                    b = DequantizeConst.apply(*self._export_b, 0)
                return x, w, b
            w = self.weight_quant(w)
            w_scale, _ = self.weight_quant.int8_grid(w, self.weight_axis)
        if b is not None and self.bias_bits is not None:
            if self.bias_bits > 0:
                b = fake_quant(b, sym_grid(b.detach().abs().max(), self.bias_bits))
            elif grid is not None and w_scale is not None:
                b = quantize_bias(b, grid.scale, w_scale)
        return x, w, b

    def freeze_for_export(self, x_grid: Grid | None) -> bool:
        """Fix the int8 weight and int32 bias the export writes; returns whether the weight grid is exact."""
        wq = self.weight_quant(self.weight).detach()
        w_scale, exact = self.weight_quant.int8_grid(wq, self.weight_axis)
        shape = [1] * wq.dim()
        shape[self.weight_axis] = -1
        q = torch.clamp(torch.round(wq / w_scale.view(shape)), -127, 127).to(torch.int8)
        self._export_w = (q, w_scale, torch.zeros_like(w_scale, dtype=torch.int8))
        self._export_b = None
        b = self.bias
        if b is not None and x_grid is not None:
            b = b.detach()
            if self.bias_bits is not None and self.bias_bits > 0:
                b = fake_quant(b, sym_grid(b.abs().max(), self.bias_bits))
            b_scale = (x_grid.scale * w_scale).float()
            b_scale = torch.where(b_scale > 0, b_scale, torch.ones_like(b_scale))
            qb = torch.round(b / b_scale).to(torch.int32)
            self._export_b = (qb, b_scale, torch.zeros_like(qb))
        return exact

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        if getattr(self, "quant_enabled", True) and self.output_quant is not None:
            return self.output_quant(y)
        return y


class QuantConv2d(nn.Conv2d, QuantLayer):
    """nn.Conv2d with fake-quantized input, weight, bias and output (same parameter names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w, b = self._quant_args(x)
        if getattr(self, "export_mode", False) and not torch.onnx.is_in_onnx_export():
            y = self._integer_conv(x)
            if y is not None:
                return self._out(y)
        return self._out(self._conv_forward(x, w, b))

    def _integer_conv(self, x: torch.Tensor) -> torch.Tensor | None:
        """The output of ONNX Runtime's QLinearConv, value for value, or None where it does not apply.

        The exported DQ -> Conv -> Q runs as an int32 sum of uint8 inputs times int8 weights plus the
        int32 bias, scaled by float32(in_scale * w_scale / out_scale) and rounded half to even. Summing
        the dequantized floats instead lands values that sit on a rounding tie one step apart, and 16
        requantizations later a few output values are several steps off; the export check compares
        against this exact form. Sums are exact in float64 (|sum| < 2**53).
        """
        grid = tagged_grid(x)
        out = self.output_quant
        if (grid is None or grid.scale.numel() != 1 or out is None or not out.enabled
                or getattr(self, "_export_w", None) is None or self.padding_mode != "zeros"):
            return None
        out_grid = out.grid()
        if needs_clip(out_grid, out.clip_range(out_grid)):
            return None  # a Clip between Conv and Q: ONNX Runtime runs the Conv in float
        qw, w_scale, _ = self._export_w
        x_scale, _ = uint8_grid(grid)
        y_scale, y_zp = uint8_grid(out_grid)
        xi = torch.round(x.double() / x_scale)
        qb = self._export_b[0].double() if self._export_b is not None else None
        acc = self._conv_forward(xi, qw.double(), qb).float()
        mult = (torch.tensor(x_scale, dtype=torch.float32) * w_scale.float()
                / torch.tensor(y_scale, dtype=torch.float32)).view(1, -1, 1, 1)
        q = torch.clamp(torch.round(acc * mult) + y_zp, 0, 255)
        return ((q - y_zp) * torch.tensor(y_scale, dtype=torch.float32)).to(x.dtype)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if getattr(self, "quant_enabled", True) and self.act_quant is not None:
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
