"""The quantizer components a schedule's `quantizers:` section builds (DoReFa, PACT, WRPN, range-linear, PTQ).

A quantizer validates its arguments in the constructor and changes the model only in `prepare(ctx)`:
linear / conv layers are re-classed to their quantized versions (same parameter names) and given weight,
input and output quantizers; activation modules (ReLU, PReLU, ...) are re-classed so their output is
fake-quantized. QAT quantizers start quantizing at the first epoch their policy schedules and stay on
afterwards; the post-training quantizer calibrates on the first batches it sees, then stays on.

Every quantizer takes `weight_range` (also per layer in `overrides`): "portable" (the default) keeps the
int8 weight codes within +-64, so the INT8 ONNX model computes exactly what the simulation does on every
x86 CPU; "full" uses the whole int8 grid, exact only on CPUs with VNNI (core.PORTABLE_WEIGHT_CODE says why).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from ..errors import ArgumentError, did_you_mean
from ..masks import canonical, canonical_pattern
from ..modules import eval_mode
from ..policy import Component, Context, Step, Timing
from ..registry import QUANTIZERS
from .core import (
    QUANT_ACTIVATIONS,
    QUANT_LAYERS,
    WEIGHT_RANGES,
    ActQuant,
    QuantActivation,
    QuantLayer,
    WeightQuant,
    act_quants,
)

logger = logging.getLogger(__name__)

#: default of an argument whose null value means something (Distiller's bits_parameters: null)
_NOT_GIVEN: Any = object()

MODES = {"SYMMETRIC": "sym", "ASYMMETRIC_UNSIGNED": "asym", "ASYMMETRIC_SIGNED": "asym"}

#: settings every quantizer accepts per layer, with the type an override value must have
BASE_SETTINGS: dict[str, tuple[type, ...]] = {
    "bits_activations": (int, type(None)),
    "bits_weights": (int, type(None)),
    "bits_bias": (int, type(None)),
    "quantize_bias": (bool,),
    # "portable": int8 weight codes within +-64, exact in ONNX Runtime on every x86 CPU (default);
    # "full": the whole int8 grid, exact only on CPUs with VNNI (see core.PORTABLE_WEIGHT_CODE)
    "weight_range": (str,),
}
#: settings only an override sets (they concern particular layers)
OVERRIDE_SETTINGS: dict[str, tuple[type, ...]] = {
    # [lo, hi]: a fixed range for the layer's input quantizer instead of a tracked / calibrated one. For a
    # network input that is an 8-bit image / 255, [0, 1] puts the 8-bit grid on the image's own values, so
    # quantizing the input loses nothing (a measured range clips and re-rounds it).
    "input_range": (list, tuple),
}


def _check_bits(key: str | tuple, value: int | None, top: int) -> None:
    if value is not None and (isinstance(value, bool) or not 1 <= value <= top):
        raise ArgumentError(key, f"must be an integer from 1 to {top} or null (no quantization), got {value!r}")


def _check_weight_range(key: str | tuple, value: str) -> None:
    if value not in WEIGHT_RANGES:
        raise ArgumentError(key, f"must be one of {', '.join(WEIGHT_RANGES)}, got {value!r}",
                            hint=did_you_mean(str(value), WEIGHT_RANGES)
                            or "portable: exact INT8 on every x86 CPU; full: the whole int8 grid, VNNI CPUs only")


class Quantizer(Component):
    """Base of the QAT and post-training quantizers: settings per layer, overrides, prepare, state."""

    #: extra per-layer settings a subclass accepts (also in overrides), name -> allowed types
    extra_settings: dict[str, tuple[type, ...]] = {}

    def __init__(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
                 bits_activations: int | None = 8, bits_weights: int | None = 8, bits_bias: int | None = None,
                 quantize_bias: bool = True, overrides: dict[str, dict[str, Any]] | None = None,
                 name: str | None = None, weight_range: str = "portable", **extra: Any):
        _check_bits("bits_activations", bits_activations, 16)
        _check_bits("bits_weights", bits_weights, 16)
        _check_bits("bits_bias", bits_bias, 32)
        _check_weight_range("weight_range", weight_range)
        self.model, self.optimizer, self.name = model, optimizer, name
        self.defaults: dict[str, Any] = {"bits_activations": bits_activations, "bits_weights": bits_weights,
                                         "bits_bias": bits_bias, "quantize_bias": quantize_bias,
                                         "weight_range": weight_range, "input_range": None, **extra}
        self.overrides: list[tuple[re.Pattern[str], dict[str, Any]]] = []
        allowed = {**BASE_SETTINGS, **OVERRIDE_SETTINGS, **self.extra_settings}
        names = [canonical(n) for n, _ in model.named_modules() if n] if model is not None else None
        for pattern, settings in (overrides or {}).items():
            try:
                regex = re.compile(canonical_pattern(str(pattern)))
            except re.error as exc:
                raise ArgumentError(("overrides", pattern), f"not a valid regular expression: {exc}",
                                    hint="patterns are Python regular expressions matched against whole "
                                         "module names, e.g. 'mid_part\\.0\\..*'") from None
            if not isinstance(settings, dict):
                raise ArgumentError(("overrides", pattern), "must be a mapping of settings, e.g. "
                                    "{bits_weights: 8, bits_activations: 8}")
            for key, value in settings.items():
                if key not in allowed:
                    raise ArgumentError(("overrides", pattern, key), f"unknown setting '{key}'",
                                        hint=did_you_mean(key, allowed) or f"settings: {', '.join(allowed)}")
                if not isinstance(value, allowed[key]) or (isinstance(value, bool) and bool not in allowed[key]):
                    kinds = " or ".join("null" if t is type(None) else t.__name__ for t in allowed[key])
                    raise ArgumentError(("overrides", pattern, key), f"must be {kinds}, got {value!r}")
                if key.startswith("bits_"):
                    _check_bits(("overrides", pattern, key), value, 32 if key == "bits_bias" else 16)
                if key == "weight_range":
                    _check_weight_range(("overrides", pattern, key), value)
                if key == "input_range" and not (len(value) == 2 and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and value[0] < value[1]):
                    raise ArgumentError(("overrides", pattern, key), f"must be [lo, hi] with lo < hi, got {value!r}",
                                        hint="e.g. [0.0, 1.0] for an image scaled to [0, 1]")
            if names is not None and not any(regex.fullmatch(n) for n in names):
                near = did_you_mean(pattern, names)
                raise ArgumentError(("overrides", pattern), "matches no module of the model",
                                    hint=near or "patterns must match a whole module name as in "
                                                 "model.named_modules(), e.g. 'mid_part\\.0\\.0'")
            self.overrides.append((regex, dict(settings)))
        self.active = False
        self._prepared = False
        self._pending: dict[str, Any] | None = None

    # ---- per-layer settings -------------------------------------------------------------------
    def settings_for(self, module_name: str) -> dict[str, Any]:
        """The defaults updated by the first override whose pattern matches the whole module name."""
        settings = dict(self.defaults)
        for regex, override in self.overrides:
            if regex.fullmatch(canonical(module_name)):
                settings.update(override)
                break
        return settings

    def weight_quant(self, settings: dict[str, Any], axis: int, per_channel_ok: bool) -> WeightQuant:
        """The weight quantizer of one layer (subclasses choose the kind)."""
        raise NotImplementedError

    def act_quant(self, settings: dict[str, Any], signed: bool, natural: tuple[float, float] | None) -> ActQuant:
        """The output quantizer of one activation module."""
        raise NotImplementedError

    def io_quant(self, settings: dict[str, Any], bits: int) -> ActQuant:
        """A layer's input (when not already quantized) or output quantizer: range tracked while training."""
        return ActQuant(bits, "ema", "asym", ema_decay=0.999)

    def _input_quant(self, settings: dict[str, Any], bits: int) -> ActQuant:
        """A layer's input quantizer: on the override's fixed `input_range`, else as io_quant."""
        if settings["input_range"] is not None:
            lo, hi = settings["input_range"]
            return ActQuant(bits, "fixed", "asym", lo=float(lo), hi=float(hi))
        return self.io_quant(settings, bits)

    # ---- prepare ------------------------------------------------------------------------------
    def fold(self, ctx: Context) -> None:
        """Hook for model changes before quantization (post-training: fold BatchNorm)."""

    def prepare(self, ctx: Context) -> None:
        """Re-class the model's layers and activations into quantized ones (once)."""
        if self._prepared:
            return
        model = ctx.model
        self.model = model
        self.fold(ctx)
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        for name, module in list(model.named_modules()):
            settings = self.settings_for(name)
            bits_a, bits_w = settings["bits_activations"], settings["bits_weights"]
            kind = type(module)
            if kind in QUANT_LAYERS and (bits_a is not None or bits_w is not None):
                axis = 1 if kind is nn.ConvTranspose2d else 0
                module.__class__ = QUANT_LAYERS[kind]
                module.weight_quant = (self.weight_quant(settings, axis, kind is not nn.ConvTranspose2d)
                                       if bits_w is not None else None)
                module.input_quant = self._input_quant(settings, bits_a) if bits_a is not None else None
                module.output_quant = self.io_quant(settings, max(8, bits_a)) if bits_a is not None else None
                if not settings["quantize_bias"]:
                    module.bias_bits = None
                else:
                    module.bias_bits = settings["bits_bias"] or 0
                module.quant_enabled = self.active
                module.to(module.weight.device)
            elif kind in QUANT_ACTIVATIONS and bits_a is not None:
                cls, signed, natural = QUANT_ACTIVATIONS[kind]
                if kind is nn.LeakyReLU and module.negative_slope == 0:
                    signed = False
                module.__class__ = cls
                module.act_quant = self.act_quant(settings, signed, natural).to(device)
                module.quant_enabled = self.active
        self._prepared = True
        self.after_prepare(ctx)
        ctx.masks.refresh()
        if self._pending is not None:
            self.load_state_dict(self._pending)
        self._apply_active()
        logger.info("%s: quantized %d layers and %d activations", type(self).__name__,
                    sum(isinstance(m, QuantLayer) for m in model.modules()),
                    sum(isinstance(m, QuantActivation) for m in model.modules()))

    def after_prepare(self, ctx: Context) -> None:
        """Hook after the model was re-classed (PACT: register the clip parameters with the optimizer)."""

    def _apply_active(self) -> None:
        if self.model is None:
            return
        for m in self.model.modules():
            if isinstance(m, (QuantLayer, QuantActivation)):
                m.quant_enabled = self.active

    def set_active(self, active: bool) -> None:
        """Switch fake quantization on or off for every layer this quantizer prepared."""
        self.active = active
        self._apply_active()

    # ---- hooks --------------------------------------------------------------------------------
    def on_epoch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        """QAT quantizes from the first scheduled epoch on (and stays on after the last)."""
        if not self.active:
            logger.info("%s: fake quantization on from epoch %d", self.name or type(self).__name__, step.epoch)
            self.set_active(True)

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Whether quantization is on, and every range / learned clip / statistic (plain tensors)."""
        ranges: dict[str, torch.Tensor] = {}
        if self.model is not None and self._prepared:
            for name, module in self.model.named_modules():
                if isinstance(module, ActQuant):
                    for key, value in module.state_dict().items():
                        ranges[f"{canonical(name)}.{key}"] = value.detach().clone()
        return {"active": self.active, "ranges": ranges}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned (kept until prepare() if the model is not prepared yet)."""
        if not self._prepared:
            self._pending = state
            return
        self._pending = None
        modules = {canonical(n): m for n, m in self.model.named_modules() if isinstance(m, ActQuant)}
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.get("ranges", {}).items():
            owner, _, leaf = key.rpartition(".")
            if owner not in modules:
                raise KeyError(f"{type(self).__name__} state has a range for '{owner}', which the model "
                               "does not quantize (was the checkpoint made with another schedule?)")
            grouped.setdefault(owner, {})[leaf] = value
        for owner, values in grouped.items():
            modules[owner].load_state_dict(values, strict=False)
        self.set_active(bool(state.get("active", self.active)))


class _ClippedQAT(Quantizer):
    """DoReFa / WRPN activations: clipped-linear on a fixed range (unsigned for ReLU, signed for PReLU)."""

    extra_settings = {"act_clip_val": (float, int)}

    def act_quant(self, settings: dict[str, Any], signed: bool, natural: tuple[float, float] | None) -> ActQuant:
        bits = settings["bits_activations"]
        if natural is not None:
            lo, hi = natural
            return ActQuant(bits, "fixed", "sym" if signed else "asym", lo=lo, hi=hi)
        clip = float(settings["act_clip_val"])
        if signed:
            return ActQuant(bits, "fixed", "sym", lo=-clip, hi=clip)
        return ActQuant(bits, "fixed", "asym", lo=0.0, hi=clip)


def _check_clip(value: float) -> None:
    if not value > 0:
        raise ArgumentError("act_clip_val", f"must be > 0, got {value!r}")


@QUANTIZERS.register()
class DorefaQuantizer(_ClippedQAT):
    """DoReFa-Net QAT: tanh-normalized k-bit weights (1 bit: sign * mean|w|), clipped-linear activations.

    keep_weight_scale (default off, as in the paper and Distiller) multiplies DoReFa's [-1, 1] weights by the
    layer's max |w|, so a network without BatchNorm (most SR networks) keeps its magnitudes.

    Activations are clipped to [0, act_clip_val] after ReLU and to [-act_clip_val, act_clip_val] after
    PReLU / LeakyReLU (symmetric), then rounded to `bits_activations` with a straight-through estimator.
    """

    def __init__(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
                 bits_activations: int | None = 8, bits_weights: int | None = 8, bits_bias: int | None = None,
                 quantize_bias: bool = True, overrides: dict[str, dict[str, Any]] | None = None,
                 act_clip_val: float = 1.0, keep_weight_scale: bool = False, name: str | None = None,
                 weight_range: str = "portable"):
        _check_clip(act_clip_val)
        self.keep_weight_scale = keep_weight_scale
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, quantize_bias, overrides,
                         name, weight_range, act_clip_val=act_clip_val)

    def weight_quant(self, settings: dict[str, Any], axis: int, per_channel_ok: bool) -> WeightQuant:
        return WeightQuant(settings["bits_weights"], "dorefa", axis=axis, keep_scale=self.keep_weight_scale,
                           weight_range=settings["weight_range"])


@QUANTIZERS.register()
class WRPNQuantizer(_ClippedQAT):
    """WRPN QAT: weights clipped to [-1, 1] and quantized symmetrically, clipped-linear activations.

    WRPN's widening of the layers is the user's model choice; this quantizer does the reduced precision.
    """

    def __init__(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
                 bits_activations: int | None = 8, bits_weights: int | None = 8, bits_bias: int | None = None,
                 quantize_bias: bool = True, overrides: dict[str, dict[str, Any]] | None = None,
                 act_clip_val: float = 1.0, name: str | None = None, weight_range: str = "portable"):
        _check_clip(act_clip_val)
        if bits_weights == 1:
            raise ArgumentError("bits_weights", "WRPN needs at least 2 weight bits (a symmetric grid)")
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, quantize_bias, overrides,
                         name, weight_range, act_clip_val=act_clip_val)

    def weight_quant(self, settings: dict[str, Any], axis: int, per_channel_ok: bool) -> WeightQuant:
        return WeightQuant(max(2, settings["bits_weights"]), "wrpn", axis=axis, weight_range=settings["weight_range"])


@QUANTIZERS.register()
class PACTQuantizer(Quantizer):
    """PACT QAT: DoReFa weights, activations clipped to a learned range [0, alpha] (ReLU) or
    [alpha_neg, alpha] (PReLU / LeakyReLU), alpha trained with its own optimizer parameter group.

    The clip receives the gradient of the elements clipped to it (PACT's estimator); `act_clip_decay` is
    the weight decay of that parameter group (None: the optimizer's default). Signed activations start at
    [-act_clip_neg_init_val, act_clip_init_val] (None: symmetric); a PReLU's negative side is small.
    keep_weight_scale as DorefaQuantizer's (default off).
    """

    extra_settings = {"act_clip_init_val": (float, int), "act_clip_neg_init_val": (float, int, type(None))}

    def __init__(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
                 bits_activations: int | None = 8, bits_weights: int | None = 8, bits_bias: int | None = None,
                 quantize_bias: bool = True, overrides: dict[str, dict[str, Any]] | None = None,
                 act_clip_init_val: float = 8.0, act_clip_decay: float | None = None,
                 act_clip_neg_init_val: float | None = None, keep_weight_scale: bool = False,
                 name: str | None = None, weight_range: str = "portable"):
        if not act_clip_init_val > 0:
            raise ArgumentError("act_clip_init_val", f"must be > 0, got {act_clip_init_val!r}")
        if act_clip_neg_init_val is not None and not act_clip_neg_init_val > 0:
            raise ArgumentError("act_clip_neg_init_val", f"must be > 0 or null, got {act_clip_neg_init_val!r}")
        if act_clip_decay is not None and act_clip_decay < 0:
            raise ArgumentError("act_clip_decay", f"must be >= 0 or null, got {act_clip_decay!r}")
        self.act_clip_decay, self.keep_weight_scale = act_clip_decay, keep_weight_scale
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, quantize_bias, overrides,
                         name, weight_range, act_clip_init_val=act_clip_init_val,
                         act_clip_neg_init_val=act_clip_neg_init_val)

    def weight_quant(self, settings: dict[str, Any], axis: int, per_channel_ok: bool) -> WeightQuant:
        return WeightQuant(settings["bits_weights"], "dorefa", axis=axis, keep_scale=self.keep_weight_scale,
                           weight_range=settings["weight_range"])

    def act_quant(self, settings: dict[str, Any], signed: bool, natural: tuple[float, float] | None) -> ActQuant:
        init = float(settings["act_clip_init_val"])
        neg = settings["act_clip_neg_init_val"]
        neg = init if neg is None else float(neg)
        hi = min(init, natural[1]) if natural else init
        lo = max(-neg, natural[0]) if natural else -neg
        return ActQuant(settings["bits_activations"], "learned", "asym", lo=lo if signed else 0.0, hi=hi,
                        signed=signed)

    def clip_parameters(self) -> list[nn.Parameter]:
        """The learned clips (alpha, and alpha_neg for signed activations)."""
        params = []
        for q in act_quants(self.model, "learned"):
            params.append(q.clip_hi)
            if q.signed:
                params.append(q.clip_lo)
        return params

    def after_prepare(self, ctx: Context) -> None:
        """Give the clips their own parameter group (with act_clip_decay) unless the optimizer has them."""
        optimizer = ctx.optimizer
        if optimizer is None:
            return
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        clips = [p for p in self.clip_parameters() if id(p) not in known]
        if clips:
            group: dict[str, Any] = {"params": clips}
            if self.act_clip_decay is not None:
                group["weight_decay"] = self.act_clip_decay
            optimizer.add_param_group(group)


def _parse_mode(mode: str | dict[str, str]) -> dict[str, str]:
    if isinstance(mode, str):
        mode = {"weights": mode, "activations": mode}
    out = {}
    for key in ("weights", "activations"):
        value = mode.get(key, "SYMMETRIC")
        if value not in MODES:
            raise ArgumentError(("mode", key) if isinstance(mode, dict) else "mode",
                                f"unknown mode '{value}'", hint=did_you_mean(str(value), MODES)
                                or f"modes: {', '.join(MODES)}")
        out[key] = MODES[value]
    extra = set(mode) - {"weights", "activations"}
    if extra:
        raise ArgumentError(("mode", sorted(extra)[0]), "unknown key", hint="use 'weights' and 'activations'")
    return out


@QUANTIZERS.register()
class QuantAwareTrainRangeLinearQuantizer(Quantizer):
    """Range-linear QAT: weights on their min/max (or max |w|) range, per tensor or per output channel;
    activation ranges tracked by a bias-corrected EMA while training.

    mode: SYMMETRIC, ASYMMETRIC_UNSIGNED or ASYMMETRIC_SIGNED, or {weights: ..., activations: ...}.
    Both asymmetric modes give the same values (they differ only in the integer type).
    """

    def __init__(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
                 bits_activations: int | None = 8, bits_weights: int | None = 8, bits_bias: int | None = None,
                 quantize_bias: bool = True, overrides: dict[str, dict[str, Any]] | None = None,
                 mode: str | dict[str, str] = "SYMMETRIC", per_channel_wts: bool = False,
                 ema_decay: float = 0.999, name: str | None = None, weight_range: str = "portable"):
        self.mode = _parse_mode(mode)
        if not 0 <= ema_decay < 1:
            raise ArgumentError("ema_decay", f"must be in [0, 1), got {ema_decay!r}")
        self.per_channel_wts, self.ema_decay = per_channel_wts, ema_decay
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, quantize_bias, overrides,
                         name, weight_range)

    def weight_quant(self, settings: dict[str, Any], axis: int, per_channel_ok: bool) -> WeightQuant:
        return WeightQuant(settings["bits_weights"], "linear", self.mode["weights"],
                           per_channel=self.per_channel_wts and per_channel_ok, axis=axis,
                           weight_range=settings["weight_range"])

    def act_quant(self, settings: dict[str, Any], signed: bool, natural: tuple[float, float] | None) -> ActQuant:
        return self.io_quant(settings, settings["bits_activations"])

    def io_quant(self, settings: dict[str, Any], bits: int) -> ActQuant:
        return ActQuant(bits, "ema", self.mode["activations"], ema_decay=self.ema_decay)


@QUANTIZERS.register()
class PostTrainLinearQuantizer(QuantAwareTrainRangeLinearQuantizer):
    """Post-training linear quantization: BatchNorm folded into the conv before it, activation ranges
    calibrated on the first `calibration_batches` forward passes (min/max, batch average, or mean +-
    num_stds std) or read from Distiller's statistics file (`model_activation_stats`), weights on their own
    range. No training; quantization is on from the start, also when no policy names it (a Distiller
    `--qe-config-file`).

    Calibrate explicitly with `calibrate(batches)`, or let the first batches of evaluation do it.
    Distiller's argument names are accepted: bits_parameters (= bits_weights), bits_accum (32: the int32
    accumulator the bias is quantized for), clip_n_stds (= num_stds), inputs_quant_auto_fallback (a layer
    whose input is not already quantized quantizes it with its own settings; false is taken the same way, with
    the layers' input_overrides), and per-layer clip_acts, input_overrides and quantize_inputs overrides.
    """

    applies_unscheduled = True
    extra_settings = {"clip_acts": (str,), "input_overrides": (dict,), "quantize_inputs": (bool,)}

    def __init__(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None,
                 bits_activations: int | None = 8, bits_weights: int | None = 8, bits_bias: int | None = None,
                 quantize_bias: bool = True, overrides: dict[str, dict[str, Any]] | None = None,
                 mode: str | dict[str, str] = "SYMMETRIC", per_channel_wts: bool = False,
                 clip_acts: Literal["NONE", "AVG", "N_STD"] = "NONE", num_stds: float | None = None,
                 calibration_batches: int = 8, fold_batchnorm: bool = True,
                 bits_parameters: int | None = _NOT_GIVEN, bits_accum: int = 32, clip_n_stds: float | None = None,
                 model_activation_stats: str | None = None, inputs_quant_auto_fallback: bool = True,
                 fp16: bool = False, fpq_module: int | str | None = None, scale_approx_mult_bits: int | None = None,
                 clip_half_range: bool = False, save_fp_weights: bool = False, also_clip_weights: bool = False,
                 name: str | None = None, weight_range: str = "portable"):
        for key, value, why in (("fp16", fp16, "half-precision modules"),
                                ("fpq_module", fpq_module, "floating-point modules in place of quantized ones"),
                                ("scale_approx_mult_bits", scale_approx_mult_bits, "integer-approximated scales"),
                                ("clip_half_range", clip_half_range, "half-range clipping"),
                                ("save_fp_weights", save_fp_weights, "re-quantizing saved float weights"),
                                ("also_clip_weights", also_clip_weights, "weight clipping")):
            if value not in (None, False):
                raise ArgumentError(key, f"Distiller's {key} ({why}) is not supported",
                                    hint=f"remove {key}; weights and activations are fake-quantized in float32")
        if bits_parameters is not _NOT_GIVEN:
            if bits_weights not in (8, bits_parameters):
                raise ArgumentError("bits_parameters", "give bits_weights or Distiller's bits_parameters, not both")
            bits_weights = bits_parameters
        if bits_accum != 32:
            raise ArgumentError("bits_accum", f"only 32 is supported, got {bits_accum}",
                                hint="biases are quantized for the int32 accumulator of the INT8 runtime")
        if clip_n_stds is not None:
            num_stds = clip_n_stds
        if clip_acts == "N_STD" and (num_stds is None or num_stds <= 0):
            raise ArgumentError("num_stds", "clip_acts: N_STD needs num_stds > 0 (e.g. 3)")
        if calibration_batches < 1:
            raise ArgumentError("calibration_batches", f"must be >= 1, got {calibration_batches!r}")
        self.clip_acts, self.num_stds = clip_acts, num_stds
        self.calibration_batches, self.fold_batchnorm = calibration_batches, fold_batchnorm
        self.inputs_quant_auto_fallback = inputs_quant_auto_fallback
        self.activation_stats = load_activation_stats(model_activation_stats)
        self.calibrated = False
        self._seen = 0
        self._hook: Any = None
        super().__init__(model, optimizer, bits_activations, bits_weights, bits_bias, quantize_bias, overrides,
                         mode, per_channel_wts, 0.0, name, weight_range)
        for pattern, settings in self.overrides:
            _check_ptq_override(pattern.pattern, settings)
        self.active = True

    def settings_for(self, module_name: str) -> dict[str, Any]:
        settings = super().settings_for(module_name)
        settings["stats"] = self.activation_stats.get(canonical(module_name))
        return settings

    def _range_quant(self, bits: int, clip: str, stats: dict[str, Any] | None) -> ActQuant:
        """A fixed range from Distiller's statistics of this tensor, else one calibrated on the first batches."""
        if stats is not None:
            lo, hi = range_from_stats(stats, clip, self.num_stds)
            return ActQuant(bits, "fixed", self.mode["activations"], lo=lo, hi=hi)
        return ActQuant(bits, "calib", self.mode["activations"], calib_clip=clip, num_stds=self.num_stds)

    def io_quant(self, settings: dict[str, Any], bits: int) -> ActQuant:
        stats = settings.get("stats") or {}
        return self._range_quant(bits, settings.get("clip_acts", self.clip_acts), stats.get("output"))

    def _input_quant(self, settings: dict[str, Any], bits: int) -> ActQuant | None:
        if settings.get("quantize_inputs") is False:
            return None
        if settings["input_range"] is not None:
            return super()._input_quant(settings, bits)
        given = (settings.get("input_overrides") or {}).get(0, {})
        clip = settings.get("clip_acts", self.clip_acts) if given.get("from_output") else given.get(
            "clip_acts", settings.get("clip_acts", self.clip_acts))
        inputs = (settings.get("stats") or {}).get("inputs") or {}
        return self._range_quant(bits, clip, inputs.get(0))

    def fold(self, ctx: Context) -> None:
        if self.fold_batchnorm:
            folded = fold_batchnorm(ctx.model)
            if folded:
                logger.info("folded BatchNorm into %s", ", ".join(folded))

    def after_prepare(self, ctx: Context) -> None:
        if not self.calibrated:
            self._start_calibration()

    def _start_calibration(self) -> None:
        for q in act_quants(self.model, "calib"):
            q.calibrating = True
        self._seen = 0
        if self._hook is None:
            self._hook = self.model.register_forward_hook(self._count)

    def _count(self, module: nn.Module, args: Any, output: Any) -> None:
        self._seen += 1
        if self._seen >= self.calibration_batches:
            self.finish_calibration()

    def finish_calibration(self) -> None:
        """Fix every activation range from the statistics seen so far; quantization is on from now."""
        for q in act_quants(self.model, "calib"):
            q.calibrating = False
            q.finish_calibration()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.calibrated = True
        logger.info("%s: calibrated activation ranges on %d batches", self.name or "PostTrainLinearQuantizer",
                    self._seen)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """Run the model (in eval mode) on `batches` to calibrate, then fix the ranges."""
        with eval_mode(self.model):
            if self.calibrated:
                for q in act_quants(self.model, "calib"):
                    q.stats.zero_()
                    q.stats[5], q.stats[6] = float("inf"), float("-inf")
                self.calibrated = False
                self._start_calibration()
            for x in batches:
                self.model(x)
                if self.calibrated:
                    break
            if not self.calibrated:
                self.finish_calibration()

    def on_epoch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        """Post-training quantization is on from prepare(); epochs change nothing."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "calibrated": self.calibrated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self._prepared and state.get("calibrated", False) and not self.calibrated:
            for q in act_quants(self.model, "calib"):
                q.calibrating = False
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            self.calibrated = True


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into the conv's weight and bias.

    The BatchNorm is replaced by nn.Identity (eval-mode statistics are used). Returns the folded convs.
    """
    folded = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                with torch.no_grad():
                    std = torch.sqrt(bn.running_var + bn.eps)
                    gamma = bn.weight if bn.affine else torch.ones_like(std)
                    beta = bn.bias if bn.affine else torch.zeros_like(std)
                    factor = gamma / std
                    conv.weight.mul_(factor.view(-1, 1, 1, 1))
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
                    new_bias = (bias - bn.running_mean) * factor + beta
                    if conv.bias is None:
                        conv.bias = nn.Parameter(new_bias)
                    else:
                        conv.bias.copy_(new_bias)
                setattr(parent, bn_name, nn.Identity())
                folded.append(f"{parent_name}.{conv_name}" if parent_name else conv_name)
    return folded


CLIP_MODES = ("NONE", "AVG", "N_STD")
#: what each tensor's entry in Distiller's statistics file must give
STATS_KEYS = ("min", "max", "avg_min", "avg_max", "mean", "std")


def _check_ptq_override(pattern: str, settings: dict[str, Any]) -> None:
    """Distiller's per-layer post-training settings: clip_acts, and input_overrides {0: {from_output | clip_acts}}."""
    if settings.get("clip_acts", "NONE") not in CLIP_MODES:
        raise ArgumentError(("overrides", pattern, "clip_acts"), f"must be one of {', '.join(CLIP_MODES)}, "
                            f"got {settings['clip_acts']!r}")
    for index, given in (settings.get("input_overrides") or {}).items():
        if index != 0 or not isinstance(given, dict):
            raise ArgumentError(("overrides", pattern, "input_overrides"), f"expected {{0: {{settings}}}}, "
                                f"got {{{index!r}: {given!r}}}", hint="layers quantized here have one input")
        for key, value in given.items():
            ok = (key == "from_output" and isinstance(value, bool)) or (key == "clip_acts" and value in CLIP_MODES)
            if not ok:
                raise ArgumentError(("overrides", pattern, "input_overrides", 0, key), f"unsupported {key}: {value!r}",
                                    hint=f"input overrides take from_output: true or clip_acts: {'|'.join(CLIP_MODES)}")


def load_activation_stats(path: str | None) -> dict[str, dict[str, Any]]:
    """Distiller's activation statistics file ({module: {inputs: {0: stats}, output: stats}}), relative paths
    taken from the working directory as Distiller takes them; {} without a path."""
    if path is None:
        return {}
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArgumentError("model_activation_stats", f"cannot read {file}: {exc.strerror}",
                            hint=f"relative paths are taken from the working directory, {Path.cwd()}") from None
    except yaml.YAMLError as exc:
        raise ArgumentError("model_activation_stats", f"{file} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ArgumentError("model_activation_stats", f"{file} is not a statistics file "
                            "({module: {inputs: {0: {min, max, ...}}, output: {min, max, ...}}})")
    for module, entry in data.items():
        tensors = [("output", entry.get("output"))] + [(f"inputs {i}", v) for i, v in
                                                       (entry.get("inputs") or {}).items()]
        for where, stats in tensors:
            missing = [k for k in STATS_KEYS if not isinstance((stats or {}).get(k), (int, float))]
            if stats is not None and missing:
                raise ArgumentError("model_activation_stats", f"{file}: the {where} statistics of '{module}' "
                                    f"lack {', '.join(missing)}")
    return {canonical(str(k)): v for k, v in data.items()}


def range_from_stats(stats: dict[str, Any], clip: str, num_stds: float | None) -> tuple[float, float]:
    """The range Distiller derives from one tensor's statistics: min / max, the batch averages (AVG), or
    mean +- num_stds std within min / max (N_STD)."""
    if clip == "AVG":
        return float(stats["avg_min"]), float(stats["avg_max"])
    lo, hi = float(stats["min"]), float(stats["max"])
    if clip == "N_STD":
        mean, std, n = float(stats["mean"]), float(stats["std"]), float(num_stds or 3.0)
        return max(mean - n * std, lo), min(mean + n * std, hi)
    return lo, hi
