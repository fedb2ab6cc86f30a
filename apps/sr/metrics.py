"""PSNR and SSIM as the super-resolution literature reports them.

Both work on the Y channel of BT.601 YCbCr (studio range 16-235) with 8-bit values: outputs are
clipped to [0, 255] and rounded, `border` pixels (the scale factor) are cropped from every side, and
SSIM uses an 11x11 Gaussian window (sigma 1.5) with Wang et al.'s constants over the valid region,
as MATLAB's `ssim_index` and scikit-image's `structural_similarity(gaussian_weights=True,
use_sample_covariance=False, data_range=255)` do. Scores are computed per image and then averaged.
`psnr`, `ssim` and `to_uint8` are the shared 8-bit metrics of apps.common.metrics.
"""
from __future__ import annotations

import numpy as np

from apps.common.metrics import psnr, ssim, to_uint8

# MATLAB rgb2ycbcr on 8-bit RGB (values 0..255): Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255
_Y = np.array([65.481, 128.553, 24.966]) / 255.0
_CB = np.array([-37.797, -74.203, 112.0]) / 255.0
_CR = np.array([112.0, -93.786, -18.214]) / 255.0
_INV = np.linalg.inv(np.stack([_Y, _CB, _CR]))


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 RGB with values 0..255 -> HxWx3 float YCbCr (Y in 16..235, Cb/Cr in 16..240)."""
    rgb = rgb.astype(np.float64)
    y = rgb @ _Y + 16.0
    cb = rgb @ _CB + 128.0
    cr = rgb @ _CR + 128.0
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Inverse of rgb_to_ycbcr, returned as uint8 RGB (clipped and rounded)."""
    shifted = ycbcr.astype(np.float64) - np.array([16.0, 128.0, 128.0])
    return np.clip(np.rint(shifted @ _INV.T), 0, 255).astype(np.uint8)


__all__ = ["psnr", "rgb_to_ycbcr", "ssim", "to_uint8", "ycbcr_to_rgb"]
