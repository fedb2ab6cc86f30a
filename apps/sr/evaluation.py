"""Running an SR model over whole images and scoring it (shared by the Trainer, the Tester and bench/)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from apps.common.evaluation import dataset_cache
from apps.common.solver import resolve_device
from compress.modules import eval_mode

from .metrics import psnr, ssim, to_uint8
from .models import input_kind


@dataclass
class ImageScore:
    """Scores of one test image, for the model and for the bicubic baseline."""

    name: str
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    loss: float


def model_input(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The tensor `model` takes: the bicubic-upscaled Y (pre-upsampling nets) or the LR Y."""
    return batch["bicubic" if input_kind(model) == "bicubic" else "lr"].to(device)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, border: int,
             on_image: Callable[[dict, np.ndarray], None] | None = None) -> list[ImageScore]:
    """Score `model` on every image of `loader` (PSNR/SSIM on 8-bit Y, `border` pixels cropped).

    `on_image(sample, sr_y_uint8)` is called per image (used to write the SR images).
    """
    scores: list[ImageScore] = []
    cache = dataset_cache(loader, "_bicubic_scores")
    with eval_mode(model):
        for batch in loader:
            out = model(model_input(model, batch, device)).float().cpu()
            hr, bic = batch["hr"], batch["bicubic"]
            loss = ((out.clamp(0, 1) - hr) ** 2).flatten(1).mean(1)
            for k in range(out.shape[0]):
                sr8, hr8, bic8 = to_uint8(out[k, 0]), to_uint8(hr[k, 0]), to_uint8(bic[k, 0])
                name = batch["name"][k] if "name" in batch else str(len(scores))
                key = (name, border)
                if key not in cache:  # the bicubic baseline never changes: score it once per dataset
                    cache[key] = (psnr(bic8, hr8, border), ssim(bic8, hr8, border))
                scores.append(ImageScore(name, psnr(sr8, hr8, border), ssim(sr8, hr8, border), *cache[key],
                                         float(loss[k])))
                if on_image is not None:
                    on_image({key: (v[k] if isinstance(v, torch.Tensor | list) else v)
                              for key, v in batch.items()}, sr8)
    return scores


def mean_scores(scores: list[ImageScore]) -> dict[str, float]:
    """Average PSNR / SSIM / loss over images, plus the bicubic averages."""
    if not scores:
        return {"psnr": float("nan"), "ssim": float("nan"), "loss": float("nan"),
                "bicubic_psnr": float("nan"), "bicubic_ssim": float("nan")}
    return {key: float(np.mean([getattr(s, key) for s in scores]))
            for key in ("psnr", "ssim", "loss", "bicubic_psnr", "bicubic_ssim")}


__all__ = ["ImageScore", "evaluate", "mean_scores", "model_input", "resolve_device"]
