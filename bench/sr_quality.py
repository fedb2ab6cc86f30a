"""SR quality benchmark: dense C2SRCNN vs AGP 50% / 75% and 40%-filter pruning (+ thinning), at x2 and x3.

Fixed iteration budgets, not wall-clock: for each scale and seed a dense C2SRCNN trains `--dense_iters`
minibatches; then every run starts from that dense checkpoint and gets the same `--finetune_iters` budget
and LR curve: dense (no compression, the fair reference), AGP to 50% and to 75% element sparsity of the
mid-part convolutions (during the first `--agp_end` of the budget, default half) — each conv to that level
(Distiller's AGP), or ranked together (`global_ranking: true`) — and one-shot 40% L1 filter pruning of
mid_part.0.0 / mid_part.1 with thinning, then fine-tuning.

The recipe is chosen on validation data, and test images are scored once: AGP's start
(`initial_sparsity`) has candidates (`--agp_initial`, default 0 as in Zhu & Gupta and 0.05 as the
original design's schedules); every AGP variant is trained from each candidate and scored on the
validation image (rocket), and the candidate with the highest validation PSNR, averaged over the AGP
variants and seeds, is the recipe. Only then are the test photographs (astronaut, chelsea, coffee) scored:
bicubic, dense, filters and the chosen recipe's AGP runs; the other candidates never see them. PSNR / SSIM
on the Y channel, border = scale, as apps/sr/metrics.py documents; means over `--seeds` (differences
between seeds are a few hundredths of a dB, as large as the targets).

Run by hand (not in CI), e.g.:
    python bench/sr_quality.py                                    # full budget
    python bench/sr_quality.py --dense_iters 300 --finetune_iters 150 --scales 2   # a quick look
Prints the validation table of the candidates and the choice, then one test table (model, parameters,
MACs, PSNR / SSIM per scale, bicubic) and the target checks.
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_training import train_sr  # noqa: E402  (bench/ is on sys.path when run as a script)

from apps.sr.data import get_testing_set, get_validation_set  # noqa: E402
from apps.sr.evaluation import evaluate, mean_scores  # noqa: E402
from apps.sr.models import C2SRCNN  # noqa: E402
from apputils.macs import model_macs  # noqa: E402

MID = ["mid_part.0.0.weight", "mid_part.1.weight", "mid_part.3.weight", "mid_part.5.weight", "mid_part.7.weight",
       "mid_part.9.0.weight"]
CHUNKS = 10  # scheduler "epochs" per phase
#: the AGP variants (name, final sparsity, global ranking) that share the chosen start
AGP_VARIANTS = (("AGP 50%", 0.5, False), ("AGP 50% global", 0.5, True), ("AGP 75%", 0.75, False),
                ("AGP 75% global", 0.75, True))
TARGETS = (("AGP 50%", 0.05), ("AGP 50% global", 0.05), ("AGP 75%", 0.15), ("AGP 75% global", 0.15))


def agp(final: float, end: float = 0.5, global_ranking: bool = False, initial: float = 0.0) -> dict[str, Any]:
    """AGP from `initial` to `final` on the mid-part convs over the first `end` fraction of the fine-tune
    budget (each conv to `final`, or with `global_ranking` the six together, ranked by magnitude across them)."""
    return {"version": 1,
            "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": initial,
                                "final_sparsity": final, "weights": MID, "global_ranking": global_ranking}},
            "policies": [{"pruner": {"instance_name": "agp", "args": {"mini_batch_pruning_frequency": 10}},
                          "starting_epoch": 0, "ending_epoch": max(1, round(CHUNKS * end)), "frequency": 1}]}


FILTER = {"version": 1,
          "pruners": {"f": {"class": "L1RankedStructureParameterPruner",
                            "reg_regims": {"mid_part.0.0.weight": [0.4, "3D"], "mid_part.1.weight": [0.4, "3D"]}}},
          "extensions": {"thin": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
          "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]},
                       {"extension": {"instance_name": "thin"}, "epochs": [0]}]}


def train(model: torch.nn.Module, schedule: dict | None, iters: int, args: argparse.Namespace, scale: int,
          seed: int) -> torch.nn.Module:
    """`iters` Adam steps (cosine LR from args.lr to 1% of it) with the schedule's hooks, in CHUNKS epochs."""
    return train_sr(model, schedule, iters, args.lr, scale=scale, crop=args.crop, batch=args.batch, seed=seed,
                    epochs=CHUNKS, dummy_input=torch.zeros(1, 1, 32, 32))[0]


def score(model: torch.nn.Module, images: torch.utils.data.Dataset, scale: int) -> dict[str, float]:
    """Mean PSNR / SSIM (and the bicubic baseline's) of `model` on whole images."""
    return mean_scores(evaluate(model, torch.utils.data.DataLoader(images, batch_size=1), torch.device("cpu"), scale))


def describe(model: torch.nn.Module) -> dict[str, float]:
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    dense, effective = model_macs(model, torch.zeros(1, 1, 256, 256))
    return {"params": params, "nonzero": nonzero, "macs": dense, "effective_macs": effective}


@dataclass
class Run:
    """One fine-tuned model of one seed: its validation scores, and its test scores once it is chosen."""

    model: torch.nn.Module
    validation: dict[str, float]
    test: dict[str, float] = field(default_factory=dict)


#: a fine-tune: (row name, AGP start or None when the row has no start, schedule or None for dense)
FineTune = tuple[str, float | None, dict[str, Any] | None]


def fine_tunes(starts: Sequence[float], end: float) -> list[FineTune]:
    """Dense, every AGP variant from every candidate start, and filter pruning."""
    agps = [(name, s, agp(final, end, ranked, s)) for s in starts for name, final, ranked in AGP_VARIANTS]
    return [("dense", None, None), *agps, ("filters 40% + thinning", None, FILTER)]


def choose_start(runs: dict[tuple[str, float | None, int], Run], starts: Sequence[float],
                 seeds: Sequence[int]) -> tuple[float, dict[float, float]]:
    """The start with the highest validation PSNR averaged over the AGP variants and seeds (the first
    listed on a tie), and each start's average."""
    mean = {s: statistics.mean(runs[name, s, seed].validation["psnr"] for name, _, _ in AGP_VARIANTS
                               for seed in seeds) for s in starts}
    return max(starts, key=mean.__getitem__), mean


def mean_of(runs: list[Run], split: str, key: str) -> float:
    return statistics.mean(getattr(r, split)[key] for r in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3])
    p.add_argument("--dense_iters", type=int, default=2000)
    p.add_argument("--finetune_iters", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=36)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="one dense model and fine-tune data stream per seed; the tables show means over seeds")
    p.add_argument("--agp_end", type=float, default=0.5,
                   help="fraction of the fine-tune budget during which AGP prunes (the rest recovers)")
    p.add_argument("--agp_initial", type=float, nargs="+", default=[0.0, 0.05],
                   help="candidate AGP initial_sparsity values, chosen between on the validation image "
                        "(0 as in Zhu & Gupta; the original design's schedules use 0.05)")
    args = p.parse_args()
    starts = list(dict.fromkeys(args.agp_initial))
    if any(not 0.0 <= s < 1.0 for s in starts):
        p.error(f"--agp_initial {starts}: each candidate start is a sparsity in [0, 1)")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    runs_of = fine_tunes(starts, args.agp_end)
    rows = ["dense", *(name for name, _, _ in AGP_VARIANTS), "filters 40% + thinning"]
    described: dict[str, dict[str, float]] = {}
    test: dict[tuple[str, int], list[Run]] = {}
    bicubic: dict[int, dict[str, float]] = {}
    chosen: dict[int, float] = {}
    start_time = time.perf_counter()
    for scale in args.scales:
        images = {"validation": get_validation_set(scale), "test": get_testing_set(scale)}
        runs: dict[tuple[str, float | None, int], Run] = {}
        for seed in args.seeds:
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            base = train(C2SRCNN(1, scale), None, args.dense_iters, args, scale, seed=seed)
            print(f"x{scale} seed {seed}: dense pre-training {args.dense_iters} iters in "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
            for name, s, schedule in runs_of:  # same fine-tune budget, same data stream, from the same checkpoint
                t0 = time.perf_counter()
                model = train(copy.deepcopy(base), schedule, args.finetune_iters, args, scale, seed=seed + 1)
                run = runs[name, s, seed] = Run(model, score(model, images["validation"], scale))
                label = name if s is None else f"{name} from {s:.0%}"
                print(f"x{scale} seed {seed}: {label:<28} validation PSNR {run.validation['psnr']:.3f} dB  "
                      f"SSIM {run.validation['ssim']:.4f}  ({time.perf_counter() - t0:.0f}s)", flush=True)

        chosen[scale], means = choose_start(runs, starts, args.seeds)
        dense_val = statistics.mean(runs["dense", None, seed].validation["psnr"] for seed in args.seeds)
        print(f"\nx{scale} validation ({', '.join(p.stem for p in images['validation'].paths)}), mean PSNR over "
              f"seeds {args.seeds}: dense {dense_val:.3f} dB; drop below dense per AGP start:")
        for name, _, _ in AGP_VARIANTS:
            print(f"  {name:<16}" + "".join(
                f"  from {s:.0%}: {dense_val - mean_of([runs[name, s, d] for d in args.seeds], 'validation', 'psnr'):+.3f}"
                for s in starts))
        print("  mean of the AGP variants: " + ", ".join(f"from {s:.0%} {means[s]:.3f} dB" for s in starts)
              + f" -> AGP starts at {chosen[scale]:.0%}\n", flush=True)

        for seed in args.seeds:  # the test images, once, for the chosen recipe and the references only
            for name in rows:
                run = runs[name, chosen[scale] if name.startswith("AGP") else None, seed]
                run.test = score(run.model, images["test"], scale)
                test.setdefault((name, scale), []).append(run)
                described[name] = describe(run.model)
        bicubic[scale] = {k: test["dense", scale][0].test[f"bicubic_{k}"] for k in ("psnr", "ssim")}

    scales = args.scales
    head = f"{'model':<24}{'params':>8}{'non-zero':>10}{'MACs(256²)':>12}{'eff. MACs':>11}"
    head += "".join(f"{f'x{s} PSNR':>10}{f'x{s} SSIM':>9}" for s in scales)
    print(f"C2SRCNN on the embedded test photographs (astronaut, chelsea, coffee), scored once; Y channel, "
          f"border = scale;\nmeans over seeds {args.seeds}; per seed: dense pre-training {args.dense_iters} "
          f"iters, then {args.finetune_iters} iters per variant; batch {args.batch}, crop {args.crop}, Adam lr "
          f"{args.lr} cosine; AGP during the first {args.agp_end:.0%}, from the start chosen on validation ("
          + ", ".join(f"x{s}: {chosen[s]:.0%}" for s in scales)
          + f"); {args.threads} threads; total {time.perf_counter() - start_time:.0f}s\n")
    print(head)
    print("-" * len(head))
    line = f"{'bicubic':<24}{'-':>8}{'-':>10}{'-':>12}{'-':>11}"
    print(line + "".join(f"{bicubic[s]['psnr']:>10.3f}{bicubic[s]['ssim']:>9.4f}" for s in scales))
    for name in rows:
        r = described[name]
        line = f"{name:<24}{r['params']:>8}{r['nonzero']:>10}{r['macs'] / 1e6:>11.1f}M{r['effective_macs'] / 1e6:>10.1f}M"
        print(line + "".join(f"{mean_of(test[name, s], 'test', 'psnr'):>10.3f}{mean_of(test[name, s], 'test', 'ssim'):>9.4f}"
                             for s in scales))
    print("\n(params / MACs are those of the last scale's model; MACs for a 256x256 output)")
    print("\ntargets (test):")
    if 2 in scales:
        gain = mean_of(test["dense", 2], "test", "psnr") - bicubic[2]["psnr"]
        print(f"  dense beats bicubic by >= 1 dB at x2: {gain:+.3f} dB -> {'met' if gain >= 1 else 'NOT met'}")
    for name, tol in TARGETS:
        for s in scales:
            dense, pruned = test["dense", s], test[name, s]
            drop = mean_of(dense, "test", "psnr") - mean_of(pruned, "test", "psnr")
            per_seed = ", ".join(f"{d.test['psnr'] - r.test['psnr']:+.3f}" for d, r in zip(dense, pruned, strict=True))
            print(f"  {name} within {tol} dB of dense at x{s}: {drop:+.3f} dB below (mean; per seed {per_seed}) -> "
                  f"{'met' if drop <= tol else 'NOT met'}")


if __name__ == "__main__":
    main()
