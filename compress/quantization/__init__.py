"""Quantization-aware training and post-training quantization (registers the quantizer classes)."""
