"""Quantization-aware training and post-training quantization (registers the quantizer classes).

core: the grids and fake-quantized modules training uses; quantizers: the schedule components;
export: the INT8 configuration and ONNX Runtime arithmetic of `export_mode(model, example_input)`.
"""
from .core import (
    PORTABLE_WEIGHT_CODE,
    WEIGHT_RANGES,
    ActQuant,
    NonFiniteRangeError,
    QuantActivation,
    QuantLayer,
    WeightQuant,
    fake_quant,
    is_quantized,
)
from .export import ExportConfig, LayerExport, export_mode, in_export_mode
from .quantizers import (
    DorefaQuantizer,
    PACTQuantizer,
    PostTrainLinearQuantizer,
    QuantAwareTrainRangeLinearQuantizer,
    Quantizer,
    WRPNQuantizer,
    fold_batchnorm,
)

__all__ = [
    "PORTABLE_WEIGHT_CODE", "WEIGHT_RANGES", "ActQuant", "DorefaQuantizer", "ExportConfig", "LayerExport",
    "NonFiniteRangeError", "PACTQuantizer", "PostTrainLinearQuantizer", "QuantAwareTrainRangeLinearQuantizer", "QuantActivation",
    "QuantLayer", "Quantizer", "WRPNQuantizer", "WeightQuant", "export_mode", "fake_quant", "fold_batchnorm",
    "in_export_mode", "is_quantized",
]
