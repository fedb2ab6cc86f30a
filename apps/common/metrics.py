"""PSNR and SSIM on 8-bit images, as the image restoration literature reports them.

Outputs are clipped to [0, 255] and rounded (`to_uint8`), `border` pixels may be cropped from every side,
and SSIM uses an 11x11 Gaussian window (sigma 1.5) with Wang et al.'s constants over the valid region,
as MATLAB's `ssim_index` and scikit-image's `structural_similarity(gaussian_weights=True,
use_sample_covariance=False, data_range=255)` do. Each app chooses the channel(s) it scores (SR: the Y
channel; deblurring: RGB) and averages per image.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view


def to_uint8(y: torch.Tensor | np.ndarray) -> np.ndarray:
    """A network output in [0, 1] (any shape) -> float64 array of 8-bit values (clipped, rounded)."""
    arr = y.detach().cpu().double().numpy() if torch.is_tensor(y) else np.asarray(y, dtype=np.float64)
    return np.clip(np.rint(arr * 255.0), 0, 255)


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def psnr(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """PSNR in dB between two HxW (or HxWxC: MSE over all channels) 8-bit-valued images, `border` pixels
    cropped from each side."""
    sr64, hr64 = _crop(np.asarray(sr, np.float64), border), _crop(np.asarray(hr, np.float64), border)
    mse = float(np.mean((sr64 - hr64) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(ax ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """Mean SSIM between two HxW 8-bit-valued images (Gaussian 11x11 window, sigma 1.5, valid region);
    HxWxC images get the mean of their channels' SSIM (scikit-image's `channel_axis=-1`).

    The Gaussian window is separable, so it is applied as an 11-tap filter along each axis to x, y,
    x^2, y^2 and xy at once, over the windows that lie inside the image (a sliding-window view times
    the taps: a float64 matrix-vector product, 2x faster than scipy's correlate1d plus cropping).
    """
    x = _crop(np.asarray(sr, np.float64), border)
    y = _crop(np.asarray(hr, np.float64), border)
    if x.ndim == 3:
        return float(np.mean([ssim(x[..., c], y[..., c]) for c in range(x.shape[-1])]))
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
