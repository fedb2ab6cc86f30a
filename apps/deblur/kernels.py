"""Synthetic camera-shake blur kernels from random camera trajectories (Boracchi & Foi 2012), as DeblurGAN
makes its training data.

A trajectory is the path of the image on the sensor during the exposure: a random walk whose velocity
keeps its speed but turns a little at each step (Gaussian perturbations), is pulled back towards the
start (the hand corrects its shake: a centripetal term), and now and then turns abruptly (a big shake),
all scaled by an "anxiety" drawn per trajectory, so kernels range from straight linear motion to curved,
jerky shake. The path is rasterised into a size x size kernel by bilinear splatting, centred on its
centre of mass (so blurring does not shift the image), and normalised to sum to 1.

Everything is drawn from the numpy Generator passed in, so a seed fixes a kernel exactly.
"""
from __future__ import annotations

import cmath
import math

import numpy as np

SAMPLES = 256  # positions along a trajectory (sub-pixel steps for kernels up to ~100 px)


def camera_trajectory(rng: np.random.Generator, length: float, samples: int = SAMPLES) -> np.ndarray:
    """`samples` complex positions (x + iy, pixels) of a random camera shake of total path `length`.

    The parameter ranges are Boracchi & Foi's (centripetal 0-0.7, big-shake chance 0-0.2, turn size
    0-10) with the anxiety drawn from 0-0.04: DeblurGAN's anxieties (0.003-0.01 over 2000 steps)
    rescaled to 256 steps, so a path wanders as much over its length. Paths range from straight lines
    to tight curls (the median spans about half its length).
    """
    anxiety = 0.04 * rng.random()  # how strongly the direction wanders
    centripetal = 0.7 * rng.random()  # how strongly the hand pulls back towards the start
    big_shake = 0.2 * rng.random()  # chance of an abrupt turn, scaled by the anxiety
    shake = 10.0 * rng.random()  # size of the random turns
    step = length / (samples - 1)
    v = cmath.exp(1j * 2 * math.pi * rng.random()) * step
    noise = rng.standard_normal((samples, 2))
    turns = rng.random((samples, 2))
    x = np.zeros(samples, dtype=np.complex128)
    pos = 0j
    for t in range(samples - 1):
        dv = anxiety * (shake * complex(noise[t, 0], noise[t, 1]) - centripetal * pos) * step
        if turns[t, 0] < big_shake * anxiety:
            dv += 2 * v * cmath.exp(1j * (math.pi + turns[t, 1] - 0.5))
        v += dv
        speed = abs(v)
        v = v / speed * step if speed > 0 else cmath.exp(1j * 2 * math.pi * turns[t, 1]) * step
        pos += v
        x[t + 1] = pos
    return x


def rasterize(trajectory: np.ndarray, size: int) -> np.ndarray:
    """The size x size kernel of a trajectory: bilinear splats, centred on the centre of mass, sum 1.

    A trajectory whose extent does not fit the kernel is shrunk about its centre of mass until it does.
    """
    centre = (size - 1) / 2
    offsets = trajectory - trajectory.mean()
    extent = max(np.abs(offsets.real).max(), np.abs(offsets.imag).max(), 1e-12)
    scale = min(1.0, (centre - 1e-6) / extent) if size > 1 else 0.0
    cols, rows = centre + scale * offsets.real, centre + scale * offsets.imag
    c0, r0 = np.floor(cols).astype(int), np.floor(rows).astype(int)
    fc, fr = cols - c0, rows - r0
    kernel = np.zeros((size, size), dtype=np.float64)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            r, c = np.clip(r0 + dr, 0, size - 1), np.clip(c0 + dc, 0, size - 1)
            np.add.at(kernel, (r, c), wr * wc)
    return kernel / kernel.sum()


def shake_kernel(rng: np.random.Generator, size: int, min_fraction: float = 0.3) -> np.ndarray:
    """A random camera-shake kernel of `size` x `size` pixels (float64, non-negative, sum 1).

    The path length is drawn uniformly between `min_fraction` x size and size pixels, so the blur
    strength varies from sample to sample up to what `size` allows.
    """
    if size < 1:
        raise ValueError(f"a blur kernel needs a size of at least 1 pixel, got {size}")
    length = size * (min_fraction + (1 - min_fraction) * rng.random())
    return rasterize(camera_trajectory(rng, length), size)
