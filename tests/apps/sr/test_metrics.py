"""PSNR / SSIM / colour conversion against scikit-image, an independent implementation, on real photographs."""
import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from apps.sr.data import degrade, embedded_dir, load_rgb
from apps.sr.metrics import psnr, rgb_to_ycbcr, ssim, to_uint8, ycbcr_to_rgb


def _y(rgb):
    return np.rint(rgb_to_ycbcr(rgb)[..., 0])


@pytest.mark.parametrize(("image", "scale"), [("astronaut.png", 2), ("chelsea.png", 3), ("coffee.png", 4)])
def test_psnr_ssim_match_skimage_on_real_images(image, scale):
    s = degrade(load_rgb(embedded_dir() / image), scale)
    hr, bic = _y(s.hr), _y(s.bicubic)
    c = slice(scale, -scale)
    ref_psnr = peak_signal_noise_ratio(hr[c, c], bic[c, c], data_range=255)
    ref_ssim = structural_similarity(hr[c, c], bic[c, c], data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert psnr(bic, hr, scale) == pytest.approx(ref_psnr, abs=1e-9)
    assert ssim(bic, hr, scale) == pytest.approx(ref_ssim, abs=1e-9)
    assert 20 < ref_psnr < 40 and 0.5 < ref_ssim < 1  # a real, imperfect reconstruction


def test_border_crop_matters_and_identical_images():
    hr = _y(load_rgb(embedded_dir() / "astronaut.png"))
    noisy = hr.copy()
    noisy[:3, :] = 0  # damage only the border
    assert psnr(noisy, hr, 3) == float("inf")
    assert psnr(noisy, hr, 0) < 30
    assert ssim(hr, hr, 2) == pytest.approx(1.0)


def test_ycbcr_matches_skimage_and_round_trips():
    rgb = load_rgb(embedded_dir() / "coffee.png")
    np.testing.assert_allclose(rgb_to_ycbcr(rgb), rgb2ycbcr(rgb), atol=1e-9)
    back = ycbcr_to_rgb(rgb_to_ycbcr(rgb))
    assert back.dtype == np.uint8 and np.abs(back.astype(int) - rgb).max() <= 1


def test_to_uint8_clips_and_rounds():
    out = to_uint8(np.array([-0.1, 0.5, 1.2, 100.4 / 255]))
    np.testing.assert_array_equal(out, [0, 128, 255, 100])
