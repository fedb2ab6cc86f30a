"""PSNR and SSIM as the super-resolution literature reports them.

Both work on the Y channel of BT.601 YCbCr (studio range 16-235) with 8-bit values: outputs are
clipped to [0, 255] and rounded, `border` pixels (the scale factor) are cropped from every side, and
SSIM uses an 11x11 Gaussian window (sigma 1.5) with Wang et al.'s constants over the valid region,
as MATLAB's `ssim_index` and scikit-image's `structural_similarity(gaussian_weights=True,
use_sample_covariance=False, data_range=255)` do. Scores are computed per image and then averaged.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

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


def to_uint8(y: torch.Tensor | np.ndarray) -> np.ndarray:
    """A network output in [0, 1] (any shape) -> float64 array of 8-bit values (clipped, rounded)."""
    arr = y.detach().cpu().double().numpy() if torch.is_tensor(y) else np.asarray(y, dtype=np.float64)
    return np.clip(np.rint(arr * 255.0), 0, 255)


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def psnr(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """PSNR in dB between two HxW 8-bit-valued images, `border` pixels cropped from each side."""
    sr64, hr64 = _crop(np.asarray(sr, np.float64), border), _crop(np.asarray(hr, np.float64), border)
    mse = float(np.mean((sr64 - hr64) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(ax ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """Mean SSIM between two HxW 8-bit-valued images (Gaussian 11x11 window, sigma 1.5, valid region).

    The Gaussian window is separable, so it is applied as an 11-tap filter along each axis to x, y,
    x^2, y^2 and xy at once, over the windows that lie inside the image (a sliding-window view times
    the taps: a float64 matrix-vector product, 2x faster than scipy's correlate1d plus cropping).
    """
    x = _crop(np.asarray(sr, np.float64), border)
    y = _crop(np.asarray(hr, np.float64), border)
    g = _gaussian_1d()
    if x.shape[0] < len(g) or x.shape[1] < len(g):
        raise ValueError(f"SSIM needs images at least as large as the {len(g)}x{len(g)} window after the "
                         f"border crop; got {x.shape[0]}x{x.shape[1]}")
    maps = np.stack([x, y, x * x, y * y, x * y])
    filtered = sliding_window_view(sliding_window_view(maps, len(g), axis=1) @ g, len(g), axis=2) @ g
    mx, my, exx, eyy, exy = filtered
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mxy = mx * my
    mxx, myy = mx * mx, my * my
    num = (2 * mxy + c1) * (2 * (exy - mxy) + c2)
    den = (mxx + myy + c1) * (exx - mxx + eyy - myy + c2)
    return float((num / den).mean())
