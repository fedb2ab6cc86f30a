"""SR quality benchmark: dense C2SRCNN vs AGP 50% / 75% and 40%-filter pruning (+ thinning), at x2 and x3.

Fixed iteration budgets, not wall-clock: for each scale and seed a dense C2SRCNN trains `--dense_iters`
minibatches; then six runs start from that dense checkpoint and get the same `--finetune_iters` budget and
LR curve: dense (no compression, the fair reference), AGP to 50% and to 75% element sparsity of the
mid-part convolutions (from `--agp_initial`, default 0 as in Zhu & Gupta, during the first `--agp_end` of
the budget, default half) — each conv to that level (Distiller's AGP), or ranked together
(`global_ranking: true`) — and one-shot 40% L1 filter pruning of mid_part.0.0 / mid_part.1 with
thinning, then fine-tuning. PSNR / SSIM are means over `--seeds` (differences between seeds are a few
hundredths of a dB, as large as the targets). Everything is scored on the embedded test photographs
(astronaut, chelsea, coffee): Y channel, border = scale, as apps/sr/metrics.py documents.

Run by hand (not in CI), e.g.:
    python bench/sr_quality.py                                    # full budget
    python bench/sr_quality.py --dense_iters 300 --finetune_iters 150 --scales 2   # a quick look
Prints one table (model, parameters, MACs, PSNR / SSIM per scale, bicubic) and the target checks.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_training import train_sr  # noqa: E402  (bench/ is on sys.path when run as a script)

from apps.sr.data import get_testing_set  # noqa: E402
from apps.sr.evaluation import evaluate, mean_scores  # noqa: E402
from apps.sr.models import C2SRCNN  # noqa: E402
from apputils.macs import model_macs  # noqa: E402

MID = ["mid_part.0.0.weight", "mid_part.1.weight", "mid_part.3.weight", "mid_part.5.weight", "mid_part.7.weight",
       "mid_part.9.0.weight"]
CHUNKS = 10  # scheduler "epochs" per phase


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


def score(model: torch.nn.Module, scale: int) -> dict[str, float]:
    loader = torch.utils.data.DataLoader(get_testing_set(scale, None), batch_size=1)
    return mean_scores(evaluate(model, loader, torch.device("cpu"), scale))


def describe(model: torch.nn.Module) -> dict[str, float]:
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    dense, effective = model_macs(model, torch.zeros(1, 1, 256, 256))
    return {"params": params, "nonzero": nonzero, "macs": dense, "effective_macs": effective}


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
                   help="one dense model and fine-tune data stream per seed; the table shows means over seeds")
    p.add_argument("--agp_end", type=float, default=0.5,
                   help="fraction of the fine-tune budget during which AGP prunes (the rest recovers)")
    p.add_argument("--agp_initial", type=float, default=0.0,
                   help="AGP's initial_sparsity (0 as in Zhu & Gupta; the original design's schedules use 0.05)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    end, initial = args.agp_end, args.agp_initial
    variants = [("dense", None),
                ("AGP 50%", agp(0.5, end, initial=initial)), ("AGP 50% global", agp(0.5, end, True, initial)),
                ("AGP 75%", agp(0.75, end, initial=initial)), ("AGP 75% global", agp(0.75, end, True, initial)),
                ("filters 40% + thinning", FILTER)]
    rows: dict[str, dict[str, Any]] = {name: {} for name, _ in variants}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    bicubic: dict[int, dict[str, float]] = {}
    start = time.perf_counter()
    for scale in args.scales:
        for seed in args.seeds:
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            base = train(C2SRCNN(1, scale), None, args.dense_iters, args, scale, seed=seed)
            print(f"x{scale} seed {seed}: dense pre-training {args.dense_iters} iters in "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
            for name, schedule in variants:  # same fine-tune budget, same data stream, from the same checkpoint
                t0 = time.perf_counter()
                model = train(copy.deepcopy(base), schedule, args.finetune_iters, args, scale, seed=seed + 1)
                s = score(model, scale)
                bicubic[scale] = {"psnr": s["bicubic_psnr"], "ssim": s["bicubic_ssim"]}
                rows[name].update(describe(model))
                runs.setdefault((name, scale), []).append(s)
                print(f"x{scale} seed {seed}: {name:<24} PSNR {s['psnr']:.3f} dB  SSIM {s['ssim']:.4f}  "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
        for name, _ in variants:
            rows[name][scale] = {k: sum(r[k] for r in runs[name, scale]) / len(args.seeds) for k in ("psnr", "ssim")}

    scales = args.scales
    head = f"{'model':<24}{'params':>8}{'non-zero':>10}{'MACs(256²)':>12}{'eff. MACs':>11}"
    head += "".join(f"{f'x{s} PSNR':>10}{f'x{s} SSIM':>9}" for s in scales)
    print(f"\nC2SRCNN on the embedded test photographs (astronaut, chelsea, coffee); Y channel, border = scale;\n"
          f"means over seeds {args.seeds}; per seed: "
          f"dense pre-training {args.dense_iters} iters, then {args.finetune_iters} iters per variant; batch "
          f"{args.batch}, crop {args.crop}, Adam lr {args.lr} cosine; AGP from {initial:.0%} during the first "
          f"{end:.0%}; "
          f"{args.threads} threads; "
          f"total {time.perf_counter() - start:.0f}s\n")
    print(head)
    print("-" * len(head))
    line = f"{'bicubic':<24}{'-':>8}{'-':>10}{'-':>12}{'-':>11}"
    print(line + "".join(f"{bicubic[s]['psnr']:>10.3f}{bicubic[s]['ssim']:>9.4f}" for s in scales))
    for name, _ in variants:
        r = rows[name]
        line = f"{name:<24}{r['params']:>8}{r['nonzero']:>10}{r['macs'] / 1e6:>11.1f}M{r['effective_macs'] / 1e6:>10.1f}M"
        print(line + "".join(f"{r[s]['psnr']:>10.3f}{r[s]['ssim']:>9.4f}" for s in scales))
    print("\n(params / MACs are those of the last scale's model; MACs for a 256x256 output)")
    print("\ntargets:")
    if 2 in scales:
        gain = rows["dense"][2]["psnr"] - bicubic[2]["psnr"]
        print(f"  dense beats bicubic by >= 1 dB at x2: {gain:+.3f} dB -> {'met' if gain >= 1 else 'NOT met'}")
    for name, tol in (("AGP 50%", 0.05), ("AGP 50% global", 0.05), ("AGP 75%", 0.15), ("AGP 75% global", 0.15)):
        for s in scales:
            drop = rows["dense"][s]["psnr"] - rows[name][s]["psnr"]
            per_seed = ", ".join(f"{d['psnr'] - r['psnr']:+.3f}" for d, r in zip(runs["dense", s], runs[name, s],
                                                                                  strict=True))
            print(f"  {name} within {tol} dB of dense at x{s}: {drop:+.3f} dB below (mean; per seed {per_seed}) -> "
                  f"{'met' if drop <= tol else 'NOT met'}")


if __name__ == "__main__":
    main()
