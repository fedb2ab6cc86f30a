"""Running a deblurring generator over whole images and scoring it (shared by the Trainer, the Tester and bench/).

Scores are those DeblurGAN reports: PSNR over the RGB pixels (8-bit values, MSE over all three
channels) and SSIM (apps.common.metrics: 11x11 Gaussian window, the mean of the three channels'), each
beside the blurred input's score. `sharpness` (gradient energy relative to the sharp image) shows what
adversarial training buys that PSNR does not.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from apps.common.evaluation import dataset_cache
from apps.common.metrics import psnr, ssim, to_uint8
from compress.modules import eval_mode


@dataclass
class ImageScore:
    """Scores of one test image, for the deblurred output and for the blurred input."""

    name: str
    psnr: float
    ssim: float
    blurred_psnr: float
    blurred_ssim: float
    loss: float


def rgb8(image: torch.Tensor) -> np.ndarray:
    """A 3xHxW tensor in [0, 1] -> HxWx3 float64 array of 8-bit values (clipped, rounded)."""
    return to_uint8(image.permute(1, 2, 0))


def gradient_energy(rgb: np.ndarray) -> float:
    """Mean squared horizontal + vertical difference of the grey image (8-bit values): a sharpness measure."""
    grey = np.asarray(rgb, np.float64).mean(axis=-1)
    return float((np.diff(grey, axis=0) ** 2).mean() + (np.diff(grey, axis=1) ** 2).mean())


def sharpness(output: np.ndarray, sharp: np.ndarray) -> float:
    """Gradient energy of `output` relative to the sharp image's: 1 = as sharp, below 1 = smoother."""
    return gradient_energy(output) / max(gradient_energy(sharp), 1e-12)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             on_image: Callable[[dict, np.ndarray], None] | None = None) -> list[ImageScore]:
    """Score `model` on every (blurred, sharp) image of `loader`: RGB PSNR / SSIM beside the blurred input's.

    `on_image(sample, deblurred_rgb8)` is called per image (used to write the deblurred images).
    """
    scores: list[ImageScore] = []
    cache = dataset_cache(loader, "_blurred_scores")
    with eval_mode(model):
        for batch in loader:
            out = model(batch["blur"].to(device)).float().cpu()
            blur, sharp = batch["blur"], batch["sharp"]
            loss = ((out.clamp(0, 1) - sharp) ** 2).flatten(1).mean(1)
            for k in range(out.shape[0]):
                out8, sharp8 = rgb8(out[k]), rgb8(sharp[k])
                name = batch["name"][k] if "name" in batch else str(len(scores))
                if name not in cache:
                    blur8 = rgb8(blur[k])
                    cache[name] = (psnr(blur8, sharp8), ssim(blur8, sharp8))
                scores.append(ImageScore(name, psnr(out8, sharp8), ssim(out8, sharp8), *cache[name], float(loss[k])))
                if on_image is not None:
                    on_image({key: (v[k] if isinstance(v, torch.Tensor | list) else v) for key, v in batch.items()},
                             out8)
    return scores


def mean_scores(scores: list[ImageScore]) -> dict[str, float]:
    """Average PSNR / SSIM / loss over images, plus the blurred input's averages."""
    keys = ("psnr", "ssim", "loss", "blurred_psnr", "blurred_ssim")
    if not scores:
        return dict.fromkeys(keys, float("nan"))
    return {key: float(np.mean([getattr(s, key) for s in scores])) for key in keys}
