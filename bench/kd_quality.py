"""Knowledge distillation benchmark: how much a teacher helps a compressed or small SR model recover (x2).

Rows (C2SRCNN on the embedded photographs, Y channel, border = scale):
- dense (fine-tuned, <loss>): the dense model fine-tuned with the same budget and task loss as a compressed
  row (the reference of that row);
- PACT w4a4 (the shipped schedules/sr/quantization_PACT.yaml) without and with distillation from
  `teacher: self` (the full-precision model as fine-tuning starts);
- AGP 75% (bench/sr_quality.py's recipe: the six mid-part convs, from 0% during the first half) without
  and with distillation from `teacher: self`;
- a dense C2SRCNN trained from scratch alone (it is the dense pre-training run) and the same run taught by
  a trained EDSR (64 channels, 8 blocks; its LR input is recovered from the student's bicubic input by
  apps/sr/teacher.py).

Fairness: for each seed a dense C2SRCNN trains --dense_iters minibatches (MSE); every fine-tune variant starts
from it with the same --finetune_iters budget, data stream and LR curve (Adam, cosine to 1%); a compressed
row, its distillation partner and its dense reference share one task loss, and the partner differs from the
row only by the `distillers:` section. The EDSR teacher trains --edsr_iters once (first seed); the taught
student starts from the dense pre-training's initialisation with its data, budget, loss and LR curve.

Each compressed row's task loss (FINETUNE_LOSS: mse or l1 against the HR crop) and distillation setting
(CHOSEN) were chosen on the validation image (rocket) with `--select`, which trains every candidate of
SELF_CANDIDATES (per task loss; `--finetune_loss` puts every row on one loss) and EDSR_CANDIDATES and
scores validation only; the default run scores the test photographs (astronaut, chelsea, coffee) once.
The loss is chosen apart from the teacher because it matters more: under mse, an output l1 distillation
term looked like a large gain for PACT that an l1 task loss alone gives as well. `--cache DIR` keeps every
trained model (keyed by everything that determines its training) so a later run with the same arguments
reuses it instead of training it again; the figures are the same with or without it.

Run by hand (not in CI), e.g.:
    python bench/kd_quality.py --threads 1 --seeds 0 1 --cache /tmp/kd_cache
    python bench/kd_quality.py --threads 1 --seeds 0 --select --finetune_loss mse --cache /tmp/kd_cache  # choose,
    python bench/kd_quality.py --threads 1 --seeds 0 --select --finetune_loss l1 --cache /tmp/kd_cache   # each loss
    python bench/kd_quality.py --dense_iters 200 --finetune_iters 100 --edsr_iters 50 --seeds 0   # a quick look
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_quality import shipped  # noqa: E402  (bench/ is on sys.path when run as a script)
from sr_quality import agp  # noqa: E402
from sr_training import train_sr  # noqa: E402

from apps.sr.data import get_testing_set, get_validation_set  # noqa: E402
from apps.sr.evaluation import evaluate, mean_scores  # noqa: E402
from apps.sr.models import C2SRCNN, EDSR  # noqa: E402
from apps.sr.solver import TASK_LOSSES  # noqa: E402
from apps.sr.teacher import OtherInputTeacher  # noqa: E402

EPOCHS = 10  # scheduler epochs per run
DUMMY = torch.zeros(1, 1, 32, 32)  # the shape probe of the distiller (and of AGP's groups, unused by element AGP)
EXPAND = "mid_part.9"  # C2SRCNN's 1x1 expand conv + PReLU: the 56-channel features the last conv reads

ROWS = ("PACT w4a4", "AGP 75%", "EDSR teacher")
#: distiller settings tried on the validation image for the `teacher: self` rows, per fine-tuning task loss
FEATURES = {"mid_part.9": [EXPAND], "first_part, mid_part.4, mid_part.9": ["first_part", "mid_part.4", EXPAND]}
L1 = {"l1": {"output_loss": "l1"}, "l1, student_weight 0": {"output_loss": "l1", "student_weight": 0.0}}
SELF_CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "mse": {"l2": {"output_loss": "l2"},
            "l2 x10": {"output_loss": "l2", "distill_weight": 10.0},
            "l2, student_weight 0": {"output_loss": "l2", "student_weight": 0.0},
            **L1,
            **{f"l2 + features l2 ({names})": {"output_loss": "l2", "features": [
                {"student": n, "teacher": n, "loss": "l2", "weight": 0.05} for n in layers]}
               for names, layers in FEATURES.items()}},
    "l1": L1,
}
EDSR_CANDIDATES = {"l2": {"output_loss": "l2"}, "l2, student_weight 0": {"output_loss": "l2", "student_weight": 0.0}}
#: what the test rows use (chosen with --select; README gives the validation figures): each compressed row's
#: fine-tuning task loss, and its distiller setting per task loss
FINETUNE_LOSS = {"PACT w4a4": "l1", "AGP 75%": "mse"}
CHOSEN = {"mse": {"PACT w4a4": "l1, student_weight 0", "AGP 75%": "l1"},
          "l1": {"PACT w4a4": "l1, student_weight 0", "AGP 75%": "l1"}}
EDSR_CHOSEN = "l2"


def candidates(row: str, loss: str) -> dict[str, dict[str, Any]]:
    """The distiller settings --select tries for `row` when the fine-tuning task loss is `loss`."""
    return EDSR_CANDIDATES if row == "EDSR teacher" else SELF_CANDIDATES[loss]


def chosen(row: str, loss: str) -> str:
    """The name of the setting the test table uses for `row`."""
    return EDSR_CHOSEN if row == "EDSR teacher" else CHOSEN[loss][row]


def with_kd(schedule: dict[str, Any] | None, settings: dict[str, Any], teacher: str = "self") -> dict[str, Any]:
    """`schedule` plus a distiller active in every epoch of the run."""
    out = copy.deepcopy(schedule) if schedule else {"version": 1, "policies": []}
    out["distillers"] = {"kd": {"class": "KnowledgeDistillation", "teacher": teacher, **settings}}
    out["policies"] = [*out.get("policies", []),
                       {"distiller": {"instance_name": "kd"}, "starting_epoch": 0, "ending_epoch": EPOCHS}]
    return out


class Runs:
    """Trains (or reuses from --cache) one model per distinct training recipe."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cache = Path(args.cache) if args.cache else None

    def train(self, make: type[nn.Module], start: dict[str, torch.Tensor] | None, schedule: dict | None, iters: int,
              *, seed: int, init_seed: int, crop: int, teachers: dict[str, nn.Module] | None = None,
              teacher_key: str = "", loss: str = "mse") -> tuple[nn.Module, float]:
        """A model of class `make` (initialised with `init_seed`, then loaded from `start` if given) trained
        `iters` of the `loss` task loss with `schedule`; returns it (eval mode) and the seconds spent (0 when
        taken from the cache)."""
        a = self.args
        recipe = [make.__name__, a.scale, iters, a.lr, crop, a.batch, seed, init_seed, EPOCHS, schedule, a.threads,
                  teacher_key, start is not None and _digest(start)]
        if loss != "mse":  # MSE runs keep the keys they had before the loss was a choice (caches stay valid)
            recipe.append(loss)
        recipe = json.dumps(recipe, sort_keys=True, default=str)
        key = hashlib.sha256(recipe.encode()).hexdigest()[:20]
        path = self.cache / f"{make.__name__}_{key}.pt" if self.cache else None
        torch.manual_seed(init_seed)
        model = make(1, a.scale)
        if start is not None:
            model.load_state_dict(start)
        if path is not None and path.exists():
            saved = torch.load(path, weights_only=True)
            if saved["schedule"]:
                compress_model(model, saved["schedule"], saved["scheduler"], teachers)
            model.load_state_dict(saved["model"])
            return model.eval(), 0.0
        t0 = time.perf_counter()
        model, sched = train_sr(model, schedule, iters, a.lr, scale=a.scale, crop=crop, batch=a.batch, seed=seed,
                                epochs=EPOCHS, dummy_input=DUMMY if schedule else None, teachers=teachers, loss=loss)
        seconds = time.perf_counter() - t0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "schedule": schedule,
                        "scheduler": sched.state_dict() if sched else None}, path)
        return model.eval(), seconds


def compress_model(model: nn.Module, schedule: dict, state: dict, teachers: dict[str, nn.Module] | None) -> None:
    """Rebuild a cached compressed model's structure (quantized layers) before its weights are loaded."""
    import compress

    sched = compress.dict_config(model, torch.optim.Adam(model.parameters()), schedule, dummy_input=DUMMY,
                                 teachers=teachers)
    sched.load_state_dict(state)


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, value in state.items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def score(model: nn.Module, scale: int, split: str) -> dict[str, float]:
    data = get_validation_set(scale, None) if split == "validation" else get_testing_set(scale, None)
    return mean_scores(evaluate(model, torch.utils.data.DataLoader(data, batch_size=1), torch.device("cpu"), scale))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--dense_iters", type=int, default=2000, help="dense pre-training (and the EDSR-taught student)")
    p.add_argument("--finetune_iters", type=int, default=1000, help="budget of every fine-tune variant")
    p.add_argument("--edsr_iters", type=int, default=2000, help="EDSR teacher training (0: skip the EDSR rows)")
    p.add_argument("--edsr_crop", type=int, default=36, help="EDSR teacher's HR crop")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=36)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--finetune_loss", choices=list(TASK_LOSSES), default=None,
                   help="task loss of every fine-tune row (each compressed row, with and without distillation, "
                        "and the dense reference fine-tuned the same way; default: each row's FINETUNE_LOSS); "
                        "the pre-training and the EDSR rows use mse")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--select", action="store_true",
                   help="train every candidate setting and score the validation image only")
    p.add_argument("--cache", default=None, metavar="DIR", help="keep / reuse trained models here")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS),
                   help="which distillation rows to run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    split = "validation" if args.select else "test"
    runs = Runs(args)
    start = time.perf_counter()
    losses = {row: args.finetune_loss or FINETUNE_LOSS.get(row, "mse") for row in ROWS}
    settings: dict[str, dict[str, dict[str, Any]]] = {}  # per row in --rows: the distiller settings to train
    for row in args.rows:
        tried, pick = candidates(row, losses[row]), chosen(row, losses[row])
        settings[row] = tried if args.select else {pick: tried[pick]}
    results: dict[str, list[dict[str, float]]] = {}
    ref_of: dict[str, str] = {}

    def record(name: str, model: nn.Module, seconds: float, seed: int, ref: str | None = None) -> None:
        s = score(model, args.scale, split)
        results.setdefault(name, []).append(s)
        if ref:
            ref_of[name] = ref
        print(f"seed {seed}: {name:<52} {split} PSNR {s['psnr']:.3f} dB  SSIM {s['ssim']:.4f}  ({seconds:.0f}s)",
              flush=True)

    edsr = None
    if args.edsr_iters and "EDSR teacher" in args.rows:
        edsr, seconds = runs.train(EDSR, None, None, args.edsr_iters, seed=args.seeds[0], init_seed=args.seeds[0],
                                   crop=args.edsr_crop)
        edsr.requires_grad_(False)
        record("EDSR teacher (alone)", edsr, seconds, args.seeds[0])
    edsr_key = f"EDSR {args.edsr_iters} {args.edsr_crop} {args.seeds[0]}"
    for seed in args.seeds:
        base, seconds = runs.train(C2SRCNN, None, None, args.dense_iters, seed=seed, init_seed=seed, crop=args.crop)
        dense_start = base.state_dict()
        record("C2SRCNN from scratch, alone", base, seconds, seed)
        if edsr is not None:
            teacher = OtherInputTeacher(edsr, args.scale, "bicubic")
            for label, kd in settings["EDSR teacher"].items():
                model, seconds = runs.train(C2SRCNN, None, with_kd(None, kd, "edsr"), args.dense_iters, seed=seed,
                                            init_seed=seed, crop=args.crop, teachers={"edsr": teacher},
                                            teacher_key=edsr_key)
                record(f"C2SRCNN from scratch, EDSR teacher, {label}", model, seconds, seed,
                       ref="C2SRCNN from scratch, alone")
        fine = {"seed": seed + 1, "init_seed": seed, "crop": args.crop}
        references: set[str] = set()
        for row, schedule in (("PACT w4a4", shipped("quantization_PACT.yaml")), ("AGP 75%", agp(0.75))):
            if row not in args.rows:
                continue
            loss = losses[row]
            ref = f"dense (fine-tuned, {loss})"
            if ref not in references:
                references.add(ref)
                model, seconds = runs.train(C2SRCNN, dense_start, None, args.finetune_iters, **fine, loss=loss)
                record(ref, model, seconds, seed)
            model, seconds = runs.train(C2SRCNN, dense_start, schedule, args.finetune_iters, **fine, loss=loss)
            record(f"{row} ({loss})", model, seconds, seed, ref=ref)
            for label, kd in settings[row].items():
                model, seconds = runs.train(C2SRCNN, dense_start, with_kd(schedule, kd), args.finetune_iters, **fine,
                                            loss=loss)
                record(f"{row} ({loss}) + KD (self), {label}", model, seconds, seed, ref=ref)

    print(f"\nx{args.scale}, {split} ({'rocket' if args.select else 'astronaut, chelsea, coffee'}); seeds {args.seeds}; "
          f"dense pre-training {args.dense_iters} iters, fine-tuning {args.finetune_iters} iters per variant, EDSR "
          f"teacher {args.edsr_iters} iters (crop {args.edsr_crop}); batch {args.batch}, crop {args.crop}, Adam "
          f"lr {args.lr} cosine; {args.threads} threads; total {time.perf_counter() - start:.0f}s\n")
    head = f"{'variant':<58}{'PSNR':>9}{'SSIM':>9}{'vs ref':>9}   per seed (vs ref)"
    print(head)
    print("-" * len(head))
    for name, scores in results.items():
        psnr = statistics.mean(s["psnr"] for s in scores)
        ssim = statistics.mean(s["ssim"] for s in scores)
        line = f"{name:<58}{psnr:>9.3f}{ssim:>9.4f}"
        ref = ref_of.get(name)
        if ref:
            diffs = [s["psnr"] - r["psnr"] for s, r in zip(scores, results[ref], strict=True)]
            line += f"{statistics.mean(diffs):>+9.3f}   " + ", ".join(f"{d:+.3f}" for d in diffs)
        print(line)
    if args.select:
        return
    print("\ntargets (mean drop below the dense fine-tuned model):")
    for row, tol in (("PACT w4a4", 0.5), ("AGP 75%", 0.10)):
        if row not in args.rows:
            continue
        loss = losses[row]
        name, ref = f"{row} ({loss}) + KD (self), {chosen(row, loss)}", results[f"dense (fine-tuned, {loss})"]
        drops = [r["psnr"] - s["psnr"] for s, r in zip(results[name], ref, strict=True)]
        without = statistics.mean(r["psnr"] - s["psnr"] for s, r in zip(results[f"{row} ({loss})"], ref, strict=True))
        drop = statistics.mean(drops)
        print(f"  {row} with KD within {tol} dB of dense: {drop:.3f} dB below (without KD {without:.3f}; per seed "
              f"{', '.join(f'{d:.3f}' for d in drops)}) -> {'met' if drop <= tol else 'NOT met'}")
    if edsr is not None:
        name = f"C2SRCNN from scratch, EDSR teacher, {EDSR_CHOSEN}"
        gains = [s["psnr"] - r["psnr"] for s, r in zip(results[name], results["C2SRCNN from scratch, alone"],
                                                       strict=True)]
        print(f"  EDSR teacher's gain for a dense C2SRCNN: {statistics.mean(gains):+.3f} dB (per seed "
              f"{', '.join(f'{g:+.3f}' for g in gains)})")


if __name__ == "__main__":
    main()
