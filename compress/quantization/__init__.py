"""Quantization-aware training and post-training quantization (registers the quantizer classes)."""
from .core import ActQuant, QuantActivation, QuantLayer, WeightQuant, fake_quant, is_quantized
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
    "ActQuant", "DorefaQuantizer", "PACTQuantizer", "PostTrainLinearQuantizer",
    "QuantAwareTrainRangeLinearQuantizer", "QuantActivation", "QuantLayer", "Quantizer", "WRPNQuantizer",
    "WeightQuant", "fake_quant", "fold_batchnorm", "is_quantized",
]
