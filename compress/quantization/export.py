"""INT8 export: the integer configuration each quantized layer is written with, and ONNX Runtime's arithmetic.

`with export_mode(model, example_input) as config:` runs `example_input` through the model once to
learn each quantized layer's input grid and which adds ONNX Runtime will fuse, then fixes, once, a
LayerExport per quantized layer (input grid, int8 weight codes and per-channel scales, int32 bias
codes, output grid, whether the weights are exactly the simulation's). Inside the context the model's
quantized layers and activation quantizers are re-classed to the export classes below (restored on
exit), so that

- torch.onnx.export traces QuantizeLinear / DequantizeLinear (uint8) for every activation quantizer
  and DequantizeLinear of int8 / int32 constants for weights and biases; ONNX Runtime fuses
  DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv and DequantizeLinear x 2 -> Add ->
  QuantizeLinear into QLinearAdd; and
- an eager forward computes what ONNX Runtime's CPU kernels compute for that graph, value for value:
  QLinearConv as an int32 sum with float32 requantization, QLinearAdd as its x86-64 AVX2 kernel does
  (fused multiply-adds with the scale ratios, see qlinear_add). The export check compares against it.

Training (core.py) knows nothing of this module; nothing here changes a parameter or a range.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..modules import eval_mode
from .core import (
    ActQuant,
    Grid,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLayer,
    QuantLinear,
    fake_quant,
    sym_grid,
    tag,
    tagged_grid,
)


@dataclass(frozen=True)
class LayerExport:
    """What one quantized layer becomes in the INT8 graph (None: that part stays float)."""

    input_grid: Grid | None
    output_grid: Grid | None
    weight_codes: torch.Tensor | None  # int8, the layer's weight shape
    weight_scale: torch.Tensor | None  # float32, one per output channel
    bias_codes: torch.Tensor | None  # int32 on input_scale x weight_scale
    bias_scale: torch.Tensor | None
    weight_range: str | None  # "portable" or "full" (the quantizer's setting for this layer)
    exact: bool  # the weights are exactly the simulation's (no re-rounding at export)

    @property
    def max_weight_code(self) -> int:
        """The largest |int8 code| of the weights (0 for float weights)."""
        if self.weight_codes is None or self.weight_codes.numel() == 0:
            return 0
        return int(self.weight_codes.to(torch.int16).abs().max())


@dataclass(frozen=True)
class ExportConfig:
    """The INT8 configuration of every quantized layer a forward pass runs, by module name."""

    layers: dict[str, LayerExport]
    fused_adds: int  # adds ONNX Runtime runs as QLinearAdd (emulated by an eager forward)

    @property
    def weights_exact(self) -> bool:
        """Whether every layer's int8 weights are exactly the QAT / post-training simulation's."""
        return all(layer.exact for layer in self.layers.values())

    @property
    def max_weight_code(self) -> int:
        """The largest |int8 weight code| in the model."""
        return max((layer.max_weight_code for layer in self.layers.values()), default=0)

    @property
    def weight_ranges(self) -> list[str]:
        """The weight_range settings of the layers with int8 weights."""
        return sorted({layer.weight_range for layer in self.layers.values() if layer.weight_range})


# ---- activations: Q -> DQ to uint8 as ONNX specifies it ------------------------------------------
def uint8_grid(grid: Grid) -> tuple[float, int]:
    """Scale and uint8 zero point of an activation grid shifted into [0, 255]."""
    levels = grid.qmax - grid.qmin
    if levels > 255:
        raise ValueError(f"an activation grid of {levels + 1} levels does not fit in 8 bits")
    return float(grid.scale), int(grid.zero_point) - grid.qmin


def clip_range(quant: ActQuant, grid: Grid) -> tuple[float, float]:
    """The values an activation quantizer's output can take: its clip (fixed / learned) within the grid."""
    lo, hi = float(grid.lo), float(grid.hi)
    if quant.mode in ("fixed", "learned"):
        b_lo, b_hi = quant.bounds()
        lo, hi = max(lo, float(b_lo)), min(hi, float(b_hi))
    return lo, hi


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


def export_fake_quant(x: torch.Tensor, grid: Grid, clip: tuple[float, float]) -> torch.Tensor:
    """An activation grid written with ops the ONNX exporter turns into Clip + QuantizeLinear/DequantizeLinear.

    Activations travel as uint8: the grid is shifted into [0, 255]; when the values it may take (`clip`)
    are narrower than the uint8 container (fewer bits, or a clip inside the grid) a Clip comes first, so
    the exported values are exactly those of training.
    """
    scale, zp = uint8_grid(grid)
    if needs_clip(grid, clip):
        x = torch.clamp(x, clip[0], clip[1])
    return QuantDequantUint8.apply(x, torch.tensor(scale, dtype=torch.float32),
                                   torch.tensor(zp, dtype=torch.uint8))


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


# ---- the export classes ---------------------------------------------------------------------------
class ExportActQuant(ActQuant):
    """An activation quantizer in export mode: the same grid, as QuantizeLinear -> DequantizeLinear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantizes():
            return super().forward(x)
        grid = self.grid()
        return tag(export_fake_quant(x, grid, clip_range(self, grid)), grid)


def _export_args(layer: QuantLayer, x: torch.Tensor, config: LayerExport | None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Input on its grid, weight and bias as DequantizeLinear of the configured integer constants."""
    if config is None or config.weight_codes is None or not layer.quant_enabled:
        return QuantLayer._quant_args(layer, x)  # float weights: as in training
    x, _ = layer.quantize_input(x)
    w = DequantizeConst.apply(config.weight_codes, config.weight_scale,
                              torch.zeros_like(config.weight_scale, dtype=torch.int8), layer.weight_axis)
    b = layer.bias
    if config.bias_codes is not None:
        b = DequantizeConst.apply(config.bias_codes, config.bias_scale, torch.zeros_like(config.bias_codes), 0)
    return x, w, b


class ExportConv2d(QuantConv2d):
    """A quantized Conv2d in export mode: QLinearConv's integer arithmetic in eager mode, QDQ when traced."""

    export_config: LayerExport | None

    def _quant_args(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return _export_args(self, x, self.export_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w, b = self._quant_args(x)
        if not torch.onnx.is_in_onnx_export():
            y = self._integer_conv(x)
            if y is not None:
                return self._out(y)
        return self._out(self._conv_forward(x, w, b))

    def _integer_conv(self, x: torch.Tensor) -> torch.Tensor | None:
        """The output of ONNX Runtime's QLinearConv, value for value, or None where it does not apply.

        The exported DQ -> Conv -> Q runs as an int32 sum of uint8 inputs times int8 weights plus the
        int32 bias, scaled by float32(in_scale * w_scale / out_scale) and rounded half to even. Summing
        the dequantized floats instead lands values that sit on a rounding tie one step apart, and 16
        requantizations later a few output values are several steps off. Sums are exact in float64
        (|sum| < 2**53).
        """
        config, out, grid = self.export_config, self.output_quant, tagged_grid(x)
        if (config is None or config.weight_codes is None or not self.quant_enabled or grid is None
                or grid.scale.numel() != 1 or out is None or not out.quantizes() or self.padding_mode != "zeros"):
            return None
        out_grid = out.grid()
        if needs_clip(out_grid, clip_range(out, out_grid)):
            return None  # a Clip between Conv and Q: ONNX Runtime runs the Conv in float
        x_scale, _ = uint8_grid(grid)
        y_scale, y_zp = uint8_grid(out_grid)
        xi = torch.round(x.double() / x_scale)
        qb = config.bias_codes.double() if config.bias_codes is not None else None
        acc = self._conv_forward(xi, config.weight_codes.double(), qb).float()
        mult = (torch.tensor(x_scale, dtype=torch.float32) * config.weight_scale.float()
                / torch.tensor(y_scale, dtype=torch.float32)).view(1, -1, 1, 1)
        q = torch.clamp(torch.round(acc * mult) + y_zp, 0, 255)
        return ((q - y_zp) * torch.tensor(y_scale, dtype=torch.float32)).to(x.dtype)


class ExportConvTranspose2d(QuantConvTranspose2d):
    """A quantized ConvTranspose2d in export mode (ONNX Runtime runs it in float between DQ and Q)."""

    export_config: LayerExport | None

    def _quant_args(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return _export_args(self, x, self.export_config)


class ExportLinear(QuantLinear):
    """A quantized Linear in export mode (DQ -> Gemm -> Q)."""

    export_config: LayerExport | None

    def _quant_args(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return _export_args(self, x, self.export_config)


EXPORT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    QuantConv2d: ExportConv2d, QuantConvTranspose2d: ExportConvTranspose2d, QuantLinear: ExportLinear,
    ActQuant: ExportActQuant,
}


# ---- QLinearAdd ---------------------------------------------------------------------------------
_ADD_NAMES = frozenset({"add", "__add__", "add_", "__iadd__"})


def _tagged_add(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether a call adds two same-shaped tensors that lie on activation grids (DQ outputs in ONNX)."""
    return (getattr(func, "__name__", "") in _ADD_NAMES and len(args) == 2 and not kwargs
            and all(isinstance(t, torch.Tensor) and tagged_grid(t) is not None for t in args)
            and args[0].shape == args[1].shape)


def _has_tensor(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return any(isinstance(v, torch.Tensor) for v in value)
    return isinstance(value, torch.Tensor)


def qlinear_add(a: torch.Tensor, b: torch.Tensor, grid_a: Grid, grid_b: Grid, grid_c: Grid) -> torch.Tensor:
    """ONNX Runtime's uint8 QLinearAdd of `a` and `b` onto `grid_c` (dequantized), as its AVX2 kernel computes it.

    The kernel (MLAS, x86-64 with AVX2, VNNI or not) never forms a + b: with the float32 ratios
    r_a = s_a / s_c, r_b = s_b / s_c and fixed = z_c - fma(r_a, z_a, r_b * z_b) it computes
    round_half_even(fma(q_a, r_a, fma(q_b, r_b, fixed))) on the raw uint8 codes and saturates to uint8,
    so values near a rounding tie can land one step from round((a + b) / s_c). Each fused multiply-add
    is emulated in float64 (the product of an 8-bit code and a float32 ratio is exact there) and
    rounded once to float32.
    """
    def f32(value: torch.Tensor) -> torch.Tensor:
        return value.float().double()  # round to float32, keep computing in float64

    (s_a, z_a), (s_b, z_b), (s_c, z_c) = uint8_grid(grid_a), uint8_grid(grid_b), uint8_grid(grid_c)
    scales = torch.tensor([s_a, s_b, s_c], dtype=torch.float32)
    r_a, r_b = f32(scales[0] / scales[2]), f32(scales[1] / scales[2])
    fixed = f32(torch.tensor(float(z_c), dtype=torch.float64) - f32(r_a * z_a + f32(r_b * z_b)))
    q_a = torch.round(a.double() / s_a) + z_a  # a = (q_a - z_a) * s_a exactly: the uint8 code back
    q_b = torch.round(b.double() / s_b) + z_b
    acc = f32(q_a * r_a + f32(q_b * r_b + fixed))
    q_c = torch.clamp(torch.round(acc), 0, 255).float()
    return ((q_c - z_c) * torch.tensor(s_c, dtype=torch.float32)).to(a.dtype)


class _AddPlanner(TorchFunctionMode):
    """Finds the adds ONNX Runtime fuses into QLinearAdd, in call order.

    ONNX Runtime fuses DQ, DQ -> Add -> Q when both operands come from DequantizeLinear (they lie on
    an activation grid) and the sum's only consumer is one QuantizeLinear (an activation quantizer
    without a Clip before it): no other op, no graph output. The planner counts, for every such add,
    what consumes its result; activation quantizers report themselves through hooks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sums: list[tuple[torch.Tensor, list[ActQuant], list[int]]] = []  # result, quantizers, other uses
        self._by_id: dict[int, int] = {}
        self._quantizing = 0

    def _record(self, t: Any) -> tuple[torch.Tensor, list[ActQuant], list[int]] | None:
        index = self._by_id.get(id(t))
        if index is None or self.sums[index][0] is not t:
            return None
        return self.sums[index]

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._quantizing == 0 and _has_tensor(out):  # a data consumer (not x.size(), x.dim(), ...)
            for t in (*args, *kwargs.values()):
                record = self._record(t)
                if record is not None:
                    record[2][0] += 1
        if _tagged_add(func, args, kwargs):
            self._by_id[id(out)] = len(self.sums)
            self.sums.append((out, [], [0]))
        return out

    def enter_quantizer(self, quant: ActQuant, args: tuple) -> None:
        """Forward pre-hook of an activation quantizer: a Q (or Clip -> Q) consumes its input."""
        record = self._record(args[0])
        if record is not None and quant.quantizes():
            grid = quant.grid()
            if needs_clip(grid, clip_range(quant, grid)):
                record[2][0] += 1
            else:
                record[1].append(quant)
        self._quantizing += 1

    def leave_quantizer(self, quant: ActQuant, args: tuple, output: Any) -> None:
        """Forward hook of an activation quantizer."""
        self._quantizing -= 1

    def plan(self, output: Any) -> list[ActQuant | None]:
        """Per add (call order): the quantizer ONNX Runtime fuses it with, or None."""
        for t in output if isinstance(output, (tuple, list)) else (output,):
            record = self._record(t)
            if record is not None:
                record[2][0] += 1  # a graph output
        return [quants[0] if len(quants) == 1 and other[0] == 0 else None for _, quants, other in self.sums]


class _QLinearAddEmulation(TorchFunctionMode):
    """Computes each fused add as QLinearAdd does, already on its quantizer's grid (which then keeps it).

    Inactive while torch.onnx traces the graph (it must record a plain Add).
    """

    def __init__(self, plan: list[ActQuant | None]):
        super().__init__()
        self.plan = plan
        self.calls = 0

    def reset(self, *_: Any) -> None:
        """Forward pre-hook of the model: the adds are counted per forward pass."""
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if torch.onnx.is_in_onnx_export() or not _tagged_add(func, args, kwargs):
            return func(*args, **kwargs)
        index, self.calls = self.calls, self.calls + 1
        quant = self.plan[index] if index < len(self.plan) else None
        if quant is None:
            return func(*args, **kwargs)
        a, b = args
        y = qlinear_add(a, b, tagged_grid(a), tagged_grid(b), quant.grid())
        if func.__name__ in ("add_", "__iadd__"):
            return a.copy_(y)
        return y


# ---- entering export mode -----------------------------------------------------------------------
def _layer_export(layer: QuantLayer, x_grid: Grid | None) -> LayerExport:
    """Fix the int8 weight codes and int32 bias one layer is exported with."""
    out = layer.output_quant
    out_grid = out.grid() if out is not None and out.quantizes() and layer.quant_enabled else None
    wq_module = layer.weight_quant
    if wq_module is None or not layer.quant_enabled:
        return LayerExport(x_grid, out_grid, None, None, None, None, None, True)
    axis = layer.weight_axis
    wq = wq_module(layer.weight).detach()
    w_scale = wq_module.code_scale(wq, axis)
    shape = [1] * wq.dim()
    shape[axis] = -1
    codes = wq / w_scale.view(shape)
    limit = wq_module.max_code
    exact = (wq_module.exact_in_int8 and bool((codes - torch.round(codes)).abs().max() < 1e-3)
             and bool(codes.abs().max() <= limit + 0.5))
    q = torch.clamp(torch.round(codes), -limit, limit).to(torch.int8)
    qb = b_scale = None
    b = layer.bias
    if b is not None and x_grid is not None:
        b = b.detach()
        if layer.bias_bits is not None and layer.bias_bits > 0:
            b = fake_quant(b, sym_grid(b.abs().max(), layer.bias_bits))
        b_scale = (x_grid.scale * w_scale).float()
        b_scale = torch.where(b_scale > 0, b_scale, torch.ones_like(b_scale))
        qb = torch.round(b / b_scale).to(torch.int32)
    return LayerExport(x_grid, out_grid, q, w_scale, qb, b_scale, wq_module.weight_range, exact)


def _plan(model: nn.Module, example_input: torch.Tensor) -> tuple[dict[QuantLayer, Grid | None],
                                                                  list[ActQuant | None]]:
    """One forward pass: each quantized layer's input grid, and the adds ONNX Runtime fuses."""
    grids: dict[QuantLayer, Grid | None] = {}

    def key(grid: Grid | None) -> tuple | None:
        return None if grid is None else (uint8_grid(grid), grid.qmin, grid.qmax)

    def input_grid(layer: QuantLayer, args: tuple) -> None:
        grid = tagged_grid(args[0])
        if (grid is None and layer.quant_enabled and layer.input_quant is not None
                and layer.input_quant.quantizes()):
            grid = layer.input_quant.grid()
        if layer in grids and key(grids[layer]) != key(grid):
            raise ValueError(f"a {type(layer).__name__} is called on inputs on different grids; "
                             "INT8 export needs one input grid per layer")
        grids.setdefault(layer, grid)

    planner = _AddPlanner()
    handles = []
    for m in model.modules():
        if isinstance(m, QuantLayer):
            handles.append(m.register_forward_pre_hook(input_grid))
        if isinstance(m, ActQuant):
            handles.append(m.register_forward_pre_hook(planner.enter_quantizer))
            handles.append(m.register_forward_hook(planner.leave_quantizer))
    try:
        with torch.no_grad(), planner:
            output = model(example_input)
    finally:
        for h in handles:
            h.remove()
    return grids, planner.plan(output)


def in_export_mode(model: nn.Module) -> bool:
    """Whether any module of `model` is in export mode."""
    return any(type(m) in EXPORT_CLASSES.values() for m in model.modules())


@contextmanager
def export_mode(model: nn.Module, example_input: torch.Tensor) -> Iterator[ExportConfig]:
    """Put the quantized `model` into export mode for the duration of the context; yields its ExportConfig.

    `example_input` (one input batch) is run once to learn each layer's input grid and the adds ONNX
    Runtime fuses; the configuration is fixed from then on. Inside the context an eager forward
    computes ONNX Runtime's integer arithmetic and torch.onnx.export writes the INT8 QDQ graph; on exit
    every module is back to its training class (parameters and ranges are never changed).
    """
    if in_export_mode(model):
        raise RuntimeError("the model is already in export mode")
    unknown = [type(m).__name__ for m in model.modules() if isinstance(m, QuantLayer) and type(m) not in EXPORT_CLASSES]
    if unknown:
        raise ValueError(f"no INT8 export for the quantized layer class {unknown[0]}")
    with eval_mode(model):  # ranges stay as they are (no EMA update, no calibration)
        grids, plan = _plan(model, example_input)
        layers = {name: _layer_export(m, grids[m]) for name, m in model.named_modules()
                  if isinstance(m, QuantLayer) and m in grids}
        config = ExportConfig(layers, sum(q is not None for q in plan))
        by_module = {m: layers[name] for name, m in model.named_modules() if name in layers}
        swapped: list[tuple[nn.Module, type[nn.Module]]] = []
        for m in model.modules():
            cls = EXPORT_CLASSES.get(type(m))
            if cls is not None:
                swapped.append((m, type(m)))
                m.__class__ = cls
                if isinstance(m, QuantLayer):
                    m.export_config = by_module.get(m)
        emulation = _QLinearAddEmulation(plan)
        handle = model.register_forward_pre_hook(emulation.reset)
        try:
            with emulation:
                yield config
        finally:
            handle.remove()
            for m, cls in swapped:
                if isinstance(m, QuantLayer):
                    del m.export_config
                m.__class__ = cls
