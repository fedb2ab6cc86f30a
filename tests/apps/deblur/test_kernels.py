"""Camera-shake kernels: non-negative, sum to 1, centred, fixed by the seed, as strong as their size allows."""
import numpy as np
import pytest

from apps.deblur.kernels import camera_trajectory, rasterize, shake_kernel


@pytest.mark.parametrize("size", [1, 2, 7, 15, 31])
def test_kernels_are_non_negative_normalised_and_centred(size):
    for seed in range(20):
        k = shake_kernel(np.random.default_rng(seed), size)
        assert k.shape == (size, size) and k.dtype == np.float64
        assert k.min() >= 0 and k.sum() == pytest.approx(1.0, abs=1e-12)
        rows, cols = np.mgrid[:size, :size]
        # centred on the centre of mass: blurring does not shift the image
        assert (k * rows).sum() == pytest.approx((size - 1) / 2, abs=1e-9)
        assert (k * cols).sum() == pytest.approx((size - 1) / 2, abs=1e-9)


def test_the_seed_fixes_the_kernel_and_different_seeds_differ():
    a, b = shake_kernel(np.random.default_rng(7), 15), shake_kernel(np.random.default_rng(7), 15)
    assert np.array_equal(a, b)
    others = [shake_kernel(np.random.default_rng(s), 15) for s in range(8, 14)]
    assert all(not np.allclose(a, o) for o in others)


def test_trajectory_has_the_requested_length_and_kernels_spread_with_their_size():
    x = camera_trajectory(np.random.default_rng(3), 12.0)
    assert np.abs(np.diff(x)).sum() == pytest.approx(12.0, rel=1e-9)
    spread = {}
    for size in (5, 25):
        ks = [shake_kernel(np.random.default_rng(s), size) for s in range(30)]
        spread[size] = np.mean([(k > 1e-3).sum() for k in ks])
    assert spread[25] > 3 * spread[5]  # a larger kernel size means longer camera paths (stronger blur)


def test_a_straight_path_rasterises_to_a_line():
    k = rasterize(np.linspace(0, 6, 64) + 0j, 9)  # horizontal motion of 6 pixels
    assert np.count_nonzero(k.sum(axis=1) > 1e-12) <= 2  # one or two rows (sub-pixel position)
    assert np.count_nonzero(k.sum(axis=0) > 1e-12) >= 6
