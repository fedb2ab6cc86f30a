"""Super-resolution data: HR photographs -> (LR, bicubic, HR) Y-channel tensors.

LR images are made from HR ones with Pillow's bicubic resize, which is anti-aliased when it
downscales (a plain bicubic interpolation is not, and gives misleading numbers). Networks see the
Y channel of BT.601 YCbCr as 8-bit values divided by 255.

Where the images come from (`dir` argument of the get_* functions):
- None: the embedded default, real photographs shipped inside the scikit-image wheel
  (test: astronaut, chelsea, coffee; validation: rocket; train: the other natural photographs);
- a BSDS300 root (`images/train`, `images/test`): train on images/train, validate and test on images/test;
- a flat folder of HR images (DIV2K_train_HR, Set5, your photos): test on all of it; for training the
  last tenth of the sorted files (at least one) is held out for validation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from apps.common.images import (
    EMBEDDED_TEST,
    EMBEDDED_TRAIN,
    EMBEDDED_VALIDATION,
    DataError,
    check_dir,
    embedded_dir,
    embedded_paths,
    images_in,
    load_rgb,
)

from .metrics import rgb_to_ycbcr

log = logging.getLogger(__name__)

_EXPECTED = "point the option at a folder of HR images or at a BSDS300 root (with images/train and images/test)"
_MISSING = ("give a folder of HR images or a BSDS300 root, or leave the option out to use the embedded "
            "photographs")


def image_paths(split: str, directory: str | Path | None) -> list[Path]:
    """The HR image files of `split` ('train', 'validation' or 'test') in `directory` (None: embedded)."""
    if directory is None:
        return embedded_paths(split)
    folder = check_dir(directory, _MISSING)
    bsds = folder / "images"
    if (bsds / "train").is_dir() and (bsds / "test").is_dir():
        return images_in(bsds / ("train" if split == "train" else "test"), _EXPECTED)
    files = images_in(folder, _EXPECTED)
    if split == "test" or len(files) == 1:
        if split != "test":
            log.warning("'%s' holds a single image: training and validating on the same image", folder)
        return files
    held_out = max(1, len(files) // 10)
    return files[-held_out:] if split == "validation" else files[:-held_out]


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


@dataclass
class SRSample:
    """One HR image and what is derived from it, as uint8 RGB arrays."""

    hr: np.ndarray
    lr: np.ndarray
    bicubic: np.ndarray


def degrade(hr: np.ndarray, scale: int) -> SRSample:
    """Crop `hr` to a multiple of `scale`, downscale it (anti-aliased bicubic) and upscale it back."""
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    if h == 0 or w == 0:
        raise DataError(f"an image of {hr.shape[1]}x{hr.shape[0]} pixels is smaller than the scale factor {scale}")
    hr = hr[:h, :w]
    lr = _resize(hr, w // scale, h // scale)
    return SRSample(hr=hr, lr=lr, bicubic=_resize(lr, w, h))


def _y_tensor(rgb: np.ndarray) -> torch.Tensor:
    """8-bit Y channel (rounded, as MATLAB's rgb2ycbcr on uint8) / 255 as a 1xHxW float tensor."""
    y = np.rint(rgb_to_ycbcr(rgb)[..., 0]) / 255.0
    return torch.from_numpy(y.astype(np.float32))[None]


class SRTrainingDataset(Dataset):
    """Random HR crops with random flips and 90-degree rotations.

    Sample i of epoch e is drawn from a generator seeded with (seed, e, i), so the data stream does not
    depend on the number of loader workers and a resumed run sees exactly the crops it would have seen.
    """

    def __init__(self, paths: list[Path], upscale_factor: int, crop_size: int, length: int, seed: int = 0):
        self.upscale_factor = upscale_factor
        self.crop = (crop_size // upscale_factor) * upscale_factor
        if self.crop < upscale_factor:
            raise DataError(f"--crop_size {crop_size} is smaller than the scale factor {upscale_factor}")
        self.images = [load_rgb(p) for p in paths]
        small = [p.name for p, im in zip(paths, self.images, strict=True) if min(im.shape[:2]) < self.crop]
        if small:
            raise DataError(f"training images {small} are smaller than --crop_size {crop_size}; "
                            f"use a smaller --crop_size or remove them")
        self.paths = paths
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        img = self.images[int(rng.integers(len(self.images)))]
        top = int(rng.integers(img.shape[0] - self.crop + 1))
        left = int(rng.integers(img.shape[1] - self.crop + 1))
        patch = img[top:top + self.crop, left:left + self.crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        patch = np.ascontiguousarray(np.rot90(patch, int(rng.integers(4))))
        s = degrade(patch, self.upscale_factor)
        return {"lr": _y_tensor(s.lr), "bicubic": _y_tensor(s.bicubic), "hr": _y_tensor(s.hr)}


class SRImageDataset(Dataset):
    """Whole images (validation / test): Y tensors plus the bicubic Cb/Cr to rebuild colour output."""

    def __init__(self, paths: list[Path], upscale_factor: int):
        self.upscale_factor = upscale_factor
        self.paths = paths
        self.samples = [degrade(load_rgb(p), upscale_factor) for p in paths]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        s = self.samples[index]
        cbcr = rgb_to_ycbcr(s.bicubic)[..., 1:].transpose(2, 0, 1).astype(np.float32)
        return {"lr": _y_tensor(s.lr), "bicubic": _y_tensor(s.bicubic), "hr": _y_tensor(s.hr),
                "cbcr": torch.from_numpy(np.ascontiguousarray(cbcr)), "name": self.paths[index].stem}


def get_training_set(upscale_factor: int, directory: str | Path | None = None, *, crop_size: int = 32,
                     length: int = 1600, seed: int = 0) -> SRTrainingDataset:
    """Random training crops from the train split of `directory` (None: the embedded photographs)."""
    return SRTrainingDataset(image_paths("train", directory), upscale_factor, crop_size, length, seed)


def get_validation_set(upscale_factor: int, directory: str | Path | None = None) -> SRImageDataset:
    """Whole validation images of `directory` (None: the embedded photographs)."""
    return SRImageDataset(image_paths("validation", directory), upscale_factor)


def get_testing_set(upscale_factor: int, directory: str | Path | None = None) -> SRImageDataset:
    """Whole test images of `directory` (None: the embedded photographs)."""
    return SRImageDataset(image_paths("test", directory), upscale_factor)


__all__ = ["EMBEDDED_TEST", "EMBEDDED_TRAIN", "EMBEDDED_VALIDATION", "DataError", "SRImageDataset", "SRSample",
           "SRTrainingDataset", "degrade", "embedded_dir", "get_testing_set", "get_training_set", "get_validation_set",
           "image_paths", "load_rgb"]
