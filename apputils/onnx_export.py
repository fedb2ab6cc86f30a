"""ONNX export: a float model, or a QDQ INT8 model that ONNX Runtime runs with integer kernels.

`transform_to_onnx(model, path, dummy_input, quantize_flag)` exports, checks the file in ONNX Runtime
against PyTorch on `dummy_input`, logs the check and returns it. Image height and width stay dynamic.

INT8 export writes every quantizer of a QAT / post-training-quantized model (compress.quantization) as
QuantizeLinear / DequantizeLinear with the model's own scales: activations uint8, weights int8 per output
channel, biases int32 on the input_scale * weight_scale grid (compress.quantization.export_mode fixes
them and computes ONNX Runtime's integer arithmetic for the check). ONNX Runtime fuses DQ -> Conv -> Q
into QLinearConv and DQ, DQ -> Add -> Q into QLinearAdd. A model without quantizers is quantized
post-training first, calibrated on `dummy_input`. A model that fails its check is never left at the
requested path: it is kept as `<path>.failed` and ExportCheckError says what differed and why.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compress.masks import MaskStore
from compress.modules import unwrap
from compress.policy import Context
from compress.quantization import (
    PORTABLE_WEIGHT_CODE,
    ActQuant,
    PostTrainLinearQuantizer,
    QuantActivation,
    QuantLayer,
    export_mode,
    is_quantized,
)

from .execution_env import UserError
from .ort_probe import u8s8_saturates

logger = logging.getLogger(__name__)

OPSET = 17
#: share of INT8 output values that must be within one output quantization step of PyTorch's
QUANTIZED_SHARE = 0.999
INTEGER_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm", "QLinearAdd",
               "QLinearConvTranspose", "DynamicQuantizeLinear")


#: the CPUs an INT8 model computes its simulation's output on (ONNX Runtime, x86-64 with AVX2 kernels)
EXACT_ON_EVERY_X86 = "x86-64 CPUs with AVX2, with and without VNNI"
EXACT_ON_VNNI = "x86-64 CPUs with AVX2 and VNNI only (weight codes above 64 saturate without VNNI)"
#: Normalisations whose statistics come from the input at run time: they stay float between the integer layers,
#: and ONNX Runtime sums their statistics in another order than PyTorch.
RUNTIME_NORMS = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
#: With RUNTIME_NORMS the check asks that ONNX Runtime's output differ from PyTorch's by less than one 8-bit level
#: of the output's range, root mean square: the model then computes the same 8-bit image.
RMS_LEVELS = 255.0


class ExportError(UserError, ValueError):
    """The model or its inputs cannot be exported; the message says why and what to do."""


class ExportCheckError(ExportError):
    """The exported model does not compute in ONNX Runtime what PyTorch computes; `check` holds the figures."""

    def __init__(self, message: str, check: dict[str, Any]):
        super().__init__(message)
        self.check = check


@dataclass
class ExportCheck:
    """What transform_to_onnx wrote and how its ONNX Runtime output compares with PyTorch's."""

    path: str
    quantized: bool
    passed: bool
    max_abs_diff: float
    tolerance: float
    within_tolerance: float
    size_bytes: int
    integer_ops: dict[str, int] = field(default_factory=dict)
    weights_exact: bool = True
    simulation_max_abs_diff: float = 0.0
    calibrated_on_dummy_input: bool = False
    exact_on: str = ""  # INT8: the CPUs this model is exact on
    rms_diff: float = 0.0  # root mean square of ONNX Runtime's output minus PyTorch's
    rms_tolerance: float = 0.0  # INT8 with runtime normalisations: the criterion (output range / 255); else 0
    weight_range: str = ""  # INT8: the layers' weight_range settings ("portable", "full" or both)
    max_weight_code: int = 0  # INT8: the largest |int8 weight code|


def _ops_after_optimization(path: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (basic + extended optimizations applied)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _act_quants_that_run(model: nn.Module, dummy_input: torch.Tensor) -> list[ActQuant]:
    """The activation quantizers a forward pass on `dummy_input` calls, in call order."""
    order: list[ActQuant] = []
    handles = [q.register_forward_hook(lambda mod, a, o: order.append(mod))
               for q in model.modules() if isinstance(q, ActQuant)]
    try:
        with torch.no_grad():
            model(dummy_input)
    finally:
        for h in handles:
            h.remove()
    return order


def _output_step(model: nn.Module, dummy_input: torch.Tensor) -> float:
    """The grid step of the last activation quantizer that runs (the output's quantization step)."""
    ran = [q for q in _act_quants_that_run(model, dummy_input) if q.enabled and bool(q.initialized)]
    return float(ran[-1].grid().scale) if ran else 0.0


def _prepare_quantized(model: nn.Module, dummy_input: torch.Tensor) -> bool:
    """Make sure `model` (a private copy) is quantized and ready; returns whether it was calibrated here."""
    calibrated_here = False
    if not any(is_quantized(m) for m in model.modules()):
        logger.warning("the model has no quantizer: quantizing it post-training (8-bit, per-channel weights) "
                       "with activation ranges calibrated on dummy_input only; for a better INT8 model "
                       "pass a representative batch as dummy_input, or train with a quantization schedule")
        quantizer = PostTrainLinearQuantizer(model, None, mode={"weights": "SYMMETRIC",
                                                                "activations": "ASYMMETRIC_UNSIGNED"},
                                             per_channel_wts=True, calibration_batches=1)
        quantizer.prepare(Context(model, None, MaskStore(model), None))
        quantizer.calibrate([dummy_input])
        calibrated_here = True
    for m in model.modules():
        if isinstance(m, (QuantLayer, QuantActivation)):
            m.quant_enabled = True
    pending = [m for m in model.modules() if isinstance(m, ActQuant) and m.calibrating]
    if pending:
        logger.warning("post-training calibration was not finished: calibrating on dummy_input as well")
        with torch.no_grad():
            model(dummy_input)
        for m in pending:
            m.calibrating = False
            m.finish_calibration()
        calibrated_here = True
    called = {id(q) for q in _act_quants_that_run(model, dummy_input)}
    missing = [n for n, m in model.named_modules() if isinstance(m, ActQuant) and id(m) in called
               and m.enabled and not bool(m.initialized)]
    if missing:
        raise ExportError(f"activation quantizers without a range yet: {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''}; train at least one epoch with the "
                          "quantization schedule (or let a post-training quantizer calibrate) before exporting")
    bad = [n for n, m in model.named_modules() if isinstance(m, ActQuant) and m.bits > 8]
    if bad:
        raise ExportError(f"{bad[0]} quantizes activations to more than 8 bits, which INT8 ONNX cannot hold; "
                          "use bits_activations <= 8 (overrides can set it per layer)")
    return calibrated_here


def _export_file(model: nn.Module, dummy_input: torch.Tensor, path: Path, quantized: bool, name: str,
                 metadata: dict[str, str]) -> None:
    """Trace `model` into `path` (checked by onnx.checker) with `metadata` as the model's metadata_props."""
    try:
        _torch_export(model, dummy_input, path, quantized)
    except Exception as exc:  # the exporter's own messages are long; keep the cause
        raise ExportError(f"torch.onnx could not export {name}: {exc}") from exc
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, metadata)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def _torch_export(model: nn.Module, dummy_input: torch.Tensor, path: Path, quantized: bool) -> None:
    dynamic = {}
    if dummy_input.dim() == 4:
        dynamic = {"input": {0: "batch", 2: "height", 3: "width"},
                   "output": {0: "batch", 2: "out_height", 3: "out_width"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy_input,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"], dynamic_axes=dynamic,
                          do_constant_folding=not quantized)  # folding would drop the weights' Q/DQ


def _saturates(check: ExportCheck) -> bool:
    """Whether this INT8 model's weight codes overflow this CPU's 16-bit pair sums (x86 without VNNI)."""
    return check.quantized and check.max_weight_code > PORTABLE_WEIGHT_CODE and u8s8_saturates()


def _failure_message(check: ExportCheck, failed: Path) -> str:
    """One line: what differed, the likely cause, the fix, and where the failed file is."""
    kind = "INT8" if check.quantized else "float"
    steps = f" = {check.max_abs_diff / check.tolerance * 1.001:.0f} quantization steps" if check.quantized else ""
    within = "one step" if check.quantized else f"{check.tolerance:.3g}"
    needed = f"{QUANTIZED_SHARE:.1%}" if check.quantized else "100%"
    if check.rms_tolerance > 0 and not _saturates(check):
        return (f"{check.path}: the INT8 model differs from PyTorch by {check.rms_diff:.3g} root mean square, more "
                f"than one 8-bit level of the output's range ({check.rms_tolerance:.3g}; its normalisation layers "
                "run in float, so the two agree to rounding only); cause: a layer computes something else in ONNX "
                f"Runtime {ort.__version__} than the emulation: please report it with the model; the file was kept as "
                f"{failed} for inspection")
    if check.within_tolerance >= (QUANTIZED_SHARE if check.quantized else 1.0):
        what = (f"{check.path}: the INT8 model matched PyTorch on dummy_input (max |diff| {check.max_abs_diff:.3g}) "
                "but computes something else on other inputs on this CPU")
    else:
        what = (f"{check.path}: the {kind} model does not compute in ONNX Runtime what PyTorch computes "
                f"(max |diff| {check.max_abs_diff:.3g}{steps}, {check.within_tolerance:.1%} of the outputs within "
                f"{within}, {needed} needed)")
    if _saturates(check):
        cause = ("cause: this CPU's ONNX Runtime integer kernels (x86 without VNNI) add pairs of uint8 x int8 "
                 "products in 16 bits and saturate, and the model uses the full int8 weight grid (weight codes up "
                 f"to {check.max_weight_code}); fix: quantize with weight_range: portable (the default: codes "
                 f"within +-{PORTABLE_WEIGHT_CODE}, exact on every x86 CPU), or run this model on a CPU with VNNI")
    elif check.quantized:
        cause = (f"its weight codes (up to {check.max_weight_code}) do not saturate this CPU's kernels, so ONNX "
                 f"Runtime {ort.__version__} computes some layer differently than the emulation: please report it "
                 "with the model")
    else:
        cause = f"ONNX Runtime {ort.__version__} computes some op differently than PyTorch: please report it"
    return f"{what}; {cause}; the file was kept as {failed} for inspection"


def transform_to_onnx(model: nn.Module, onnx_file: str | os.PathLike, dummy_input: torch.Tensor,
                      quantize_flag: bool = False) -> dict[str, Any]:
    """Export `model` to `onnx_file` (float, or INT8 QDQ with quantize_flag) and check it in ONNX Runtime.

    The check runs `dummy_input` through both and compares: float within 1e-4 everywhere, INT8 within
    one quantization step of the output for at least 99.9% of the values. The PyTorch side of an INT8
    check is the model in compress.quantization.export_mode: exactly the exported integer weights, each
    quantized Conv2d computing what QLinearConv does and each fused add what QLinearAdd does, so a model
    whose convolutions and adds all fuse matches ONNX Runtime exactly (max_abs_diff 0) on the CPUs named
    in `exact_on`; layers without that form (ConvTranspose2d, Linear, a clip narrower than the grid) sum
    floats, and a value on a rounding tie may land one step apart. Where a weight grid does not fit the
    int8 codes of its weight_range (8-bit DoReFa, asymmetric weights) its distance to the simulation is
    reported as simulation_max_abs_diff. A model with normalisation layers whose statistics are computed at
    run time (InstanceNorm, GroupNorm, LayerNorm) cannot match exactly: they stay float, ONNX Runtime sums
    their statistics in another order, and rounding differences of 1e-7 grow through the following integer
    layers; its check asks instead that the outputs differ by less than one 8-bit level of the output's range,
    root mean square (`rms_tolerance`), and `exact_on` says none. Returns the check as a dict (see
    ExportCheck) and logs it.

    A model that fails its check raises ExportCheckError (a UserError: one line saying what differed, the
    likely cause and the fix) and is kept only as `<onnx_file>.failed`; so is an INT8 model whose weight
    codes exceed +-64 on a CPU whose integer kernels saturate (apputils.ort_probe), even where
    `dummy_input` happens not to show it.
    """
    if not isinstance(dummy_input, torch.Tensor) or dummy_input.dim() < 2:
        raise ExportError("dummy_input must be a tensor shaped like one input batch, e.g. "
                          "torch.zeros(1, 1, 32, 32) for a one-channel image model")
    path = Path(onnx_file)
    if path.suffix != ".onnx":
        raise ExportError(f"{path}: the ONNX file name must end in .onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    inner = unwrap(model)
    net = copy.deepcopy(inner).cpu().eval()
    net._forward_hooks.clear()
    for p in net.parameters():
        p.requires_grad_(False)
    x = dummy_input.detach().float().cpu()
    calibrated_here = False
    norms: list[str] = []
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if quantize_flag:
            calibrated_here = _prepare_quantized(net, x)
            with torch.no_grad():
                simulation = net(x)
            step = _output_step(net, x)
            norms = sorted({type(m).__name__ for m in net.modules() if isinstance(m, RUNTIME_NORMS)})
            with export_mode(net, x) as config, torch.no_grad():
                exact_on = EXACT_ON_EVERY_X86 if config.max_weight_code <= PORTABLE_WEIGHT_CODE else EXACT_ON_VNNI
                if norms:
                    exact_on = (f"none: {', '.join(norms)} run in float between the integer layers, and ONNX "
                                "Runtime sums their statistics in another order (checked to one 8-bit level, "
                                "root mean square)")
                extra: dict[str, Any] = {"weights_exact": config.weights_exact, "exact_on": exact_on,
                                         "weight_range": ", ".join(config.weight_ranges),
                                         "max_weight_code": config.max_weight_code}
                reference = net(x)  # ONNX Runtime's integer arithmetic on the exported constants
                _export_file(net, x, tmp, True, type(inner).__name__,
                             {"quantization.exact_on": exact_on, "quantization.weight_range": extra["weight_range"],
                              "quantization.max_weight_code": str(config.max_weight_code)})
            extra["simulation_max_abs_diff"] = float((reference - simulation).abs().max())
            if not config.weights_exact:
                logger.warning("some weight grids do not fit the int8 codes of their weight_range (8-bit DoReFa, "
                               "asymmetric weights, or DoReFa above 6 bits on the portable range); they are "
                               "re-rounded to symmetric int8 per channel (INT8 model vs QAT simulation: "
                               "max |diff| %.3g)", extra["simulation_max_abs_diff"])
            tolerance = step * 1.001 if step > 0 else 1e-4
        else:
            for m in net.modules():
                if isinstance(m, (QuantLayer, QuantActivation)):
                    m.quant_enabled = False
            with torch.no_grad():
                reference = net(x)
            _export_file(net, x, tmp, False, type(inner).__name__, {})
            extra = {}
            tolerance = 1e-4 * max(1.0, float(reference.abs().max()))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        errors = np.abs(session.run(None, {"input": x.numpy()})[0] - reference.numpy())
        diff = float(errors.max())
        within = float((errors <= tolerance).mean())
        rms = float(np.sqrt(np.mean(np.square(errors, dtype=np.float64))))
        rms_tolerance = (float(reference.max() - reference.min()) / RMS_LEVELS
                         if quantize_flag and norms else 0.0)
        if not quantize_flag:
            passed = within == 1.0
        elif rms_tolerance > 0:
            passed = rms <= rms_tolerance
        else:
            passed = within >= QUANTIZED_SHARE
        ops = _ops_after_optimization(tmp)
        check = ExportCheck(str(path), quantize_flag, passed, diff, tolerance, within, tmp.stat().st_size,
                            {op: n for op, n in ops.items() if op in INTEGER_OPS},
                            calibrated_on_dummy_input=calibrated_here, rms_diff=rms, rms_tolerance=rms_tolerance,
                            **extra)
        check.passed = check.passed and not _saturates(check)  # right on dummy_input is not right on every input
        if not check.passed:
            failed = path.with_name(path.name + ".failed")
            os.replace(tmp, failed)
            path.unlink(missing_ok=True)  # an older file there is not this model
            raise ExportCheckError(_failure_message(check, failed), asdict(check) | {"failed_path": str(failed)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("ONNX export %s (%s, %.1f KiB): ONNX Runtime vs PyTorch max |diff| %.3g, %.4f%% of values within "
                "%.3g, root mean square %.3g -> PASSED%s", path, "INT8 QDQ" if quantize_flag else "float",
                check.size_bytes / 1024, diff, 100 * within, tolerance, rms,
                f"; exact on {check.exact_on}; integer kernels: {check.integer_ops}" if quantize_flag else "")
    if quantize_flag and not check.integer_ops:
        logger.warning("ONNX Runtime runs no integer kernel for %s: is any conv quantized on input and weight?",
                       path)
    return asdict(check)
