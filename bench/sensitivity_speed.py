"""Sensitivity analysis speed on C2SRCNN: Distiller's naive loop vs apputils.sensitivity.

Variants, all on the same test images, metric function (PSNR + SSIM on the 8-bit Y channel, as the
SR app scores; or PSNR alone with --metrics psnr) and levels (0.0 .. 0.9), element-wise, every weight:

* naive:    Distiller's loop: per (weight, level) deep-copy the model, prune the copy, run the whole test
            with the same metric function as the others;
* no-cache: apputils.sensitivity with use_cache=False: prune in place and restore, whole model per
            level, levels that leave the weight unchanged (level 0) reuse the baseline;
* ours-nchw: as no-cache, plus the layers before the pruned one run once per weight (their output is
            cached per image): the layer cache alone (memory_format='contiguous', fast_kernels=False);
* ours-cl:  the layer cache, and the layers run channels-last (NHWC), which the default
            memory_format='auto' picks for a convolutional network (fast_kernels=False);
* ours:     apputils.sensitivity as shipped: as ours-cl, plus the narrow output convolution run as a
            matrix product and shifted sums (apputils.conv_taps), which fast_kernels=True picks
            where it measures faster.

After one untimed warm-up round, every round runs each variant once, in an order rotated round by
round (so no variant always runs first or after the same one); the medians and their ratios are
printed, and the result tables are checked to agree (exactly up to float rounding for the NCHW variants; channels-last and
the taps sum in another order, so their PSNR / SSIM may differ in the last digits: the largest
difference is printed).

    python bench/sensitivity_speed.py [--rounds 3] [--threads 1] [--crop 0] [--metrics sr|psnr]
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import Stopwatch, rotation  # noqa: E402  (bench/ is on sys.path when run as a script)

from apps.sr.data import get_testing_set  # noqa: E402
from apps.sr.metrics import psnr, ssim, to_uint8  # noqa: E402
from apps.sr.models import C2SRCNN  # noqa: E402
from apputils.sensitivity import (  # noqa: E402
    DEFAULT_SPARSITIES,
    Evaluation,
    prunable_weights,
    pruned_tensors,
    sensitivity_analysis,
)
from compress.pruning.groups import LocalGroups  # noqa: E402

SCALE = 2


def sr_metrics(out: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """Mean PSNR / SSIM of a batch on 8-bit values, `SCALE` border pixels cropped (as the SR app)."""
    p, s = [], []
    for k in range(out.shape[0]):
        sr8, hr8 = to_uint8(out[k, 0]), to_uint8(hr[k, 0])
        p.append(psnr(sr8, hr8, SCALE))
        s.append(ssim(sr8, hr8, SCALE))
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s))}


def psnr_metric(out: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """Mean PSNR of a batch on 8-bit values (a cheap metric: the model dominates the time)."""
    return {"psnr": float(np.mean([psnr(to_uint8(out[k, 0]), to_uint8(hr[k, 0]), SCALE)
                                   for k in range(out.shape[0])]))}


def layer_times(model: torch.nn.Module, batches: list, reps: int = 5) -> dict[str, float]:
    """Mean forward seconds of each leaf module over one pass of the test batches (pre/post hooks)."""
    samples: dict[str, list[float]] = {}
    started: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if not list(mod.children()):
            hooks.append(mod.register_forward_pre_hook(lambda m, i, n=name: started.__setitem__(n, time.perf_counter())))
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, n=name: samples.setdefault(n, []).append(time.perf_counter() - started[n])))
    with torch.no_grad():
        for _ in range(reps):
            for x, _ in batches:
                model(x)
    for h in hooks:
        h.remove()
    return {n: sum(v) / reps for n, v in samples.items()}


def naive(model: torch.nn.Module, evaluation: Callable[[torch.nn.Module], dict[str, float]]) -> list[dict[str, float]]:
    """Distiller's sensitivity loop: a deep copy per step, the whole test per step."""
    rows = []
    names = prunable_weights(model)
    for name in names:
        for level in DEFAULT_SPARSITIES:
            cpy = copy.deepcopy(model)
            params = dict(cpy.named_parameters())
            new = pruned_tensors(params, name, level, "element", LocalGroups(cpy))
            with torch.no_grad():
                for n, v in new.items():
                    params[n].copy_(v)
            rows.append({"parameter": name, "sparsity": level, **evaluation(cpy)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadiest on a shared machine)")
    ap.add_argument("--crop", type=int, default=0, help="centre-crop test images to this HR size (0: whole)")
    ap.add_argument("--metrics", choices=["sr", "psnr"], default="sr",
                    help="sr: PSNR + SSIM as the SR app scores; psnr: PSNR only (cheap, shows the model's share)")
    args = ap.parse_args()
    # the tool logs which layers it runs by taps (and why not channels-last, if so)
    logging.basicConfig(format="  [%(name)s] %(message)s")
    logging.getLogger("apputils.sensitivity").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    batches = []
    for item in get_testing_set(SCALE):
        bic, hr = item["bicubic"][None], item["hr"][None]
        if args.crop:
            h, w = hr.shape[-2:]
            t, left = max((h - args.crop) // 2, 0), max((w - args.crop) // 2, 0)
            bic = bic[..., t:t + args.crop, left:left + args.crop]
            hr = hr[..., t:t + args.crop, left:left + args.crop]
        batches.append((bic, hr))
    evaluation = Evaluation(batches, sr_metrics if args.metrics == "sr" else psnr_metric)
    model = C2SRCNN(num_channels=1, upscale_factor=SCALE).eval()
    steps = len(prunable_weights(model)) * len(DEFAULT_SPARSITIES)
    pixels = sum(hr.numel() for _, hr in batches)
    print(f"C2SRCNN, {len(batches)} test images ({pixels} HR pixels), {steps} (weight, level) steps, "
          f"element-wise, metrics={args.metrics}, threads={args.threads}, rounds={args.rounds} (+1 warm-up, "
          f"order rotated per round)")

    times_by_layer = layer_times(model, batches)
    order = list(times_by_layer)
    total = sum(times_by_layer.values())
    print("forward time per layer (% of the model): "
          + ", ".join(f"{n} {100 * t / total:.0f}%" for n, t in times_by_layer.items() if t / total >= 0.03))
    # each weight's levels re-run only the layers from its own on: the cache's ceiling for the model part
    owners = [w.rsplit(".", 1)[0] for w in prunable_weights(model)]
    suffix = [sum(times_by_layer[n] for n in order[order.index(o):]) for o in owners]
    print(f"estimated ceiling of the layer cache on the model's share of the time: "
          f"{len(owners) * total / sum(suffix):.2f}x (metrics and level-0 reuse not included)")

    variants = {
        "naive": lambda: naive(model, evaluation),
        "no-cache": lambda: sensitivity_analysis(model, None, evaluation, "element", use_cache=False,
                                                 progress=False).to_dict("records"),
        "ours-nchw": lambda: sensitivity_analysis(model, None, evaluation, "element", memory_format="contiguous",
                                                  fast_kernels=False, progress=False).to_dict("records"),
        "ours-cl": lambda: sensitivity_analysis(model, None, evaluation, "element", fast_kernels=False,
                                                progress=False).to_dict("records"),
        "ours": lambda: sensitivity_analysis(model, None, evaluation, "element", progress=False).to_dict("records"),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    results = {name: run() for name, run in variants.items()}  # the warm-up round, not timed
    for r in range(args.rounds):
        for name in rotation(list(variants), r):
            with Stopwatch() as watch:
                results[name] = variants[name]()
            times[name].append(watch.wall)
            cpu[name].append(watch.cpu)

    largest = 0.0
    for name in variants:
        for a, b in zip(results["ours-nchw"], results[name], strict=True):
            shared = [m for m in b if m in a and m not in ("parameter", "sparsity", "actual_sparsity")]
            diff = max((abs(a[m] - b[m]) for m in shared), default=float("inf"))
            reordered = name in ("ours-cl", "ours")  # sums in another order than NCHW conv2d
            if reordered:
                largest = max(largest, diff)
            if a["parameter"] != b["parameter"] or not shared or diff > (1e-3 if reordered else 1e-6):
                raise SystemExit(f"results differ between ours-nchw and {name}: {a} vs {b}")
    for label, table in (("wall", times), ("CPU", cpu)):
        med = {k: statistics.median(v) for k, v in table.items()}
        print(f"{label} time (CPU time of this process: steadier than wall time on a shared machine)"
              if label == "CPU" else f"{label} time")
        for name, t in med.items():
            print(f"  {name:>9}: median {t:7.2f} s   ({', '.join(f'{x:.2f}' for x in table[name])})")
        print(f"  speed-up ours vs naive:           {med['naive'] / med['ours']:.2f}x  (same metric function)")
        print(f"  speed-up ours-nchw vs no-cache:   {med['no-cache'] / med['ours-nchw']:.2f}x  (the layer cache alone)")
        print(f"  speed-up ours-cl vs ours-nchw:    {med['ours-nchw'] / med['ours-cl']:.2f}x  (channels-last alone)")
        print(f"  speed-up ours vs ours-cl:         {med['ours-cl'] / med['ours']:.2f}x  (narrow convs by taps alone)")
    print(f"results agree: naive, no-cache and ours-nchw within 1e-6 in every metric; ours-cl and ours "
          f"(sums in another order) within {largest:.1e}")


if __name__ == "__main__":
    main()
