"""Distillation teachers that take the other input kind: an LR-input teacher (EDSR, ESPCN, FSRCNN) for a
bicubic-input student (C2SRCNN, SRCNN), or the reverse.

A distiller runs its teacher on the student's own input. The app's bicubic image is Pillow's bicubic
upscaling of the LR image (apps/sr/data.py), a linear map along each axis, so the LR image is recovered
from the bicubic one by least squares (its pseudo-inverse) up to the 8-bit rounding of the data: 56-62 dB
from the true LR image on the embedded photographs at x2 and x3, where an anti-aliased downscale of the
bicubic image gives only 41-47 dB (a blurred LR image, which costs a sharp teacher its edge).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Pillow's bicubic resize of a length-n_in signal to n_out samples, as an (n_out, n_in) float64 matrix."""
    basis = Image.fromarray(np.eye(n_in, dtype=np.float32)).resize((n_out, n_in), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(basis, dtype=np.float64)).T.contiguous()


class OtherInputTeacher(nn.Module):
    """Feeds `teacher` (which takes the other kind of input) from the student's input: the LR image
    recovered from the bicubic one, or the bicubic image made from the LR one, axis by axis."""

    def __init__(self, teacher: nn.Module, scale: int, student_kind: str):
        super().__init__()
        self.teacher, self.scale = teacher, scale
        self.to_lr = student_kind == "bicubic"
        self.INPUT_KIND = student_kind
        self._maps: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def _map(self, n: int, x: torch.Tensor) -> torch.Tensor:
        key = (n, x.device, x.dtype)
        if key not in self._maps:
            if self.to_lr:
                if n % self.scale:
                    raise ValueError(f"a bicubic input of {n} pixels is not a multiple of the scale {self.scale}")
                m = torch.linalg.pinv(resize_matrix(n // self.scale, n))
            else:
                m = resize_matrix(n, n * self.scale)
            self._maps[key] = m.to(device=x.device, dtype=x.dtype)
        return self._maps[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(self._map(x.shape[-2], x) @ x @ self._map(x.shape[-1], x).T)


__all__ = ["OtherInputTeacher", "resize_matrix"]
