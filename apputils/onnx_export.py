"""ONNX export: a float model, or a QDQ INT8 model that ONNX Runtime runs with integer kernels.

`transform_to_onnx(model, path, dummy_input, quantize_flag)` exports, checks the file in ONNX Runtime
against PyTorch on `dummy_input`, logs the check and returns it. Image height and width stay dynamic.

INT8 export writes every quantizer of a QAT / post-training-quantized model (compress.quantization) as
QuantizeLinear / DequantizeLinear with the model's own scales: activations uint8, weights int8 per output
channel, biases int32 on the input_scale * weight_scale grid. ONNX Runtime fuses DQ -> Conv -> Q into
QLinearConv. A model without quantizers is quantized post-training first, calibrated on `dummy_input`.
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
from compress.policy import Context
from compress.quantization import (
    ActQuant,
    PostTrainLinearQuantizer,
    QuantActivation,
    QuantLayer,
    is_quantized,
)

logger = logging.getLogger(__name__)

OPSET = 17
#: share of INT8 output values that must be within one output quantization step of PyTorch's
QUANTIZED_SHARE = 0.999
INTEGER_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm", "QLinearAdd",
               "QLinearConvTranspose", "DynamicQuantizeLinear")


class ExportError(ValueError):
    """The model or its inputs cannot be exported; the message says why and what to do."""


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


def _set_export_mode(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, (ActQuant, QuantLayer)):
            m.export_mode = on
        if isinstance(m, QuantLayer):
            m._export_w = None


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


def transform_to_onnx(model: nn.Module, onnx_file: str | os.PathLike, dummy_input: torch.Tensor,
                      quantize_flag: bool = False) -> dict[str, Any]:
    """Export `model` to `onnx_file` (float, or INT8 QDQ with quantize_flag) and check it in ONNX Runtime.

    The check runs `dummy_input` through both and compares: float within 1e-4 everywhere, INT8 within
    one quantization step of the output for at least 99.9% of the values. The PyTorch side of an INT8
    check is the model with exactly the exported integer weights, and each quantized Conv2d computes
    there what QLinearConv does (int32 sum, float32 requantization), so a model whose convolutions all
    fuse matches ONNX Runtime exactly (max_abs_diff 0); layers without that form (ConvTranspose2d,
    Linear, a clip narrower than the grid) sum floats, and a value on a rounding tie may land one step
    apart. Where a weight grid does not fit int8 (8-bit DoReFa, asymmetric weights) its distance to the
    QAT simulation is reported as simulation_max_abs_diff. Returns the check as a dict (see
    ExportCheck) and logs it.
    """
    if not isinstance(dummy_input, torch.Tensor) or dummy_input.dim() < 2:
        raise ExportError("dummy_input must be a tensor shaped like one input batch, e.g. "
                          "torch.zeros(1, 1, 32, 32) for a one-channel image model")
    path = Path(onnx_file)
    if path.suffix != ".onnx":
        raise ExportError(f"{path}: the ONNX file name must end in .onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    inner = getattr(model, "module", model)  # DataParallel / DDP
    net = copy.deepcopy(inner).cpu().eval()
    net._forward_hooks.clear()
    x = dummy_input.detach().float().cpu()
    calibrated_here = False
    if quantize_flag:
        calibrated_here = _prepare_quantized(net, x)
    else:
        for m in net.modules():
            if isinstance(m, (QuantLayer, QuantActivation)):
                m.quant_enabled = False
    with torch.no_grad():
        reference = net(x)
    step = _output_step(net, x) if quantize_flag else 0.0
    weights_exact, simulation_diff = True, 0.0
    if quantize_flag:
        _set_export_mode(net, True)
        with torch.no_grad():
            exported = net(x)  # also fixes the int8 weights and int32 biases as constants before tracing
        simulation_diff = float((exported - reference).abs().max())
        reference = exported
        weights_exact = all(getattr(m, "export_exact", True) for m in net.modules() if isinstance(m, QuantLayer))
        if not weights_exact:
            logger.warning("some weight grids do not fit int8 exactly (8-bit DoReFa or asymmetric weights); "
                           "they are re-rounded to symmetric int8 per channel (INT8 model vs QAT simulation: "
                          "max |diff| %.3g)", simulation_diff)
    for p in net.parameters():
        p.requires_grad_(False)
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _torch_export(net, x, tmp, quantize_flag)
        except Exception as exc:  # the exporter's own messages are long; keep the cause
            raise ExportError(f"torch.onnx could not export {type(inner).__name__}: {exc}") from exc
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x.numpy()})[0]
    errors = np.abs(out - reference.numpy())
    diff = float(errors.max())
    if quantize_flag:
        tolerance = step * 1.001 if step > 0 else 1e-4
    else:
        tolerance = 1e-4 * max(1.0, float(reference.abs().max()))
    within = float((errors <= tolerance).mean())
    passed = within >= QUANTIZED_SHARE if quantize_flag else within == 1.0
    ops = _ops_after_optimization(path)
    check = ExportCheck(str(path), quantize_flag, passed, diff, tolerance, within, path.stat().st_size,
                        {op: n for op, n in ops.items() if op in INTEGER_OPS}, weights_exact, simulation_diff,
                        calibrated_here)
    kind = "INT8 QDQ" if quantize_flag else "float"
    level = logging.INFO if check.passed else logging.ERROR
    logger.log(level, "ONNX export %s (%s, %.1f KiB): ONNX Runtime vs PyTorch max |diff| %.3g, %.4f%% of "
               "values within %.3g -> %s%s", path, kind, check.size_bytes / 1024, diff, 100 * within, tolerance,
               "PASSED" if check.passed else "FAILED",
               f"; integer kernels: {check.integer_ops}" if quantize_flag else "")
    if quantize_flag and not check.integer_ops:
        logger.warning("ONNX Runtime runs no integer kernel for %s: is any conv quantized on input and weight?",
                       path)
    return asdict(check)
