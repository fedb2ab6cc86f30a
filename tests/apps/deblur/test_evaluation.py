"""RGB scores beside the blurred input's, and the sharpness measure."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from apps.common.metrics import psnr
from apps.deblur.data import get_validation_set
from apps.deblur.evaluation import evaluate, gradient_energy, mean_scores, rgb8, sharpness


def test_rgb_psnr_averages_the_error_over_all_channels():
    a = np.zeros((4, 4, 3))
    b = a.copy()
    b[..., 0] = 3.0  # one channel off by 3: MSE = 9 / 3
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / 3.0))


def test_identity_scores_the_blurred_input_and_a_perfect_model_beats_it():
    loader = DataLoader(get_validation_set(blur_size=7), batch_size=1)
    same = mean_scores(evaluate(nn.Identity(), loader, torch.device("cpu")))
    assert same["psnr"] == pytest.approx(same["blurred_psnr"]) and same["ssim"] == pytest.approx(same["blurred_ssim"])

    class Oracle(nn.Module):
        def forward(self, x):
            return loader.dataset[0]["sharp"][None]

    best = mean_scores(evaluate(Oracle(), loader, torch.device("cpu")))
    assert best["psnr"] == float("inf") and best["ssim"] == pytest.approx(1.0)
    assert best["blurred_psnr"] == same["blurred_psnr"]


def test_blur_lowers_sharpness():
    s = get_validation_set(blur_size=11)[0]
    sharp, blurred = rgb8(s["sharp"]), rgb8(s["blur"])
    assert sharpness(sharp, sharp) == pytest.approx(1.0)
    assert 0 < sharpness(blurred, sharp) < 0.6
    assert gradient_energy(np.zeros((5, 5, 3))) == 0.0
