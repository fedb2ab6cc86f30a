"""Deblurring quality benchmark: the DeblurGAN-CPU generator vs the blurred input, and what compression costs.

Fixed iteration budgets, not wall-clock. For each seed a dense generator (`--model` preset) trains
`--dense_iters` minibatches on the content loss (L1 x 100, Adam, LR rising linearly over --warmup steps,
then a cosine from --lr to 1% of it) on the embedded photographs with synthetic camera-shake blur (the app's
data: --crop_size crops, --blur_size kernels); the process CPU time of that training is printed (target: at
most 30 minutes with one thread).
Every variant then starts from that dense generator with the same `--finetune_iters` budget, data stream
and LR curve:
- dense: fine-tuned without compression (the equally trained reference every drop is measured against);
- AGP 50%: schedules/deblur/agp_prune.yaml (the 18 trunk convs, 0 -> 50% in the first 6 of 8 epochs);
- filters 50% + thinning: schedules/deblur/filter_prune.yaml (half of each residual block's inner filters,
  structured AGP in epochs 0-3, removed at epoch 4), then fine-tuned thin;
- filters 50% + thinning + KD: schedules/deblur/kd_filter_prune.yaml, the same taught by the dense generator
  (`teacher: self`, L1 output loss weighted like the content loss, --content_weight) in every epoch;
- QAT w8a8: schedules/deblur/quantization_linear_w8a8.yaml, scored in PyTorch and as an INT8 ONNX model in
  ONNX Runtime (the export's check on a test image is printed too; the default portable weight grid keeps
  the scores equal on CPUs with and without VNNI);
- post-train w8a8: schedules/deblur/post_train_w8a8.yaml on the fine-tuned dense generator, calibrated on
  8 training batches (no training), PyTorch and ONNX Runtime;
- WGAN-GP: fine-tuned with the PatchGAN critic (--ndf, the app's default) for the same number of generator
  steps: content x 100 + adversarial, DeblurGAN's Adam betas, LR (--gan_lr, 1e-4) and --critic_iters (5).
Scores: RGB PSNR / SSIM on the embedded test photographs (astronaut, chelsea, coffee, blurred by their
fixed kernels; `--split validation` scores the validation photograph instead, for choosing a recipe),
and sharpness = gradient energy of the output / that of the sharp image (1 = as sharp, the blurred input
is far below). Means over `--seeds` with each seed's value; seeds can run in parallel (`--jobs`).
Latency: FP32 ONNX of the dense and the thinned generator (and the INT8 models) in ONNX Runtime, 1 x 3 x
--size x --size, --threads intra-op threads, runs interleaved, medians (seed 0's models); then ONNX
Runtime's own profile of the dense and the thinned model: time per op type, the share inside the residual
blocks (all that thinning their inner filters shrinks) and the speed-up that bounds.

Run by hand (not in CI), e.g.:
    python bench/deblur_quality.py --threads 1 --seeds 0             # every variant (the README splits it in two)
    python bench/deblur_quality.py --dense_iters 200 --finetune_iters 40 --seeds 0 --variants dense   # a quick look
    python bench/deblur_quality.py --threads 1 --seeds 0 --dense_iters 500 --curve 100 --warmup 0     # a recipe's curve
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_training import cosine_loop  # noqa: E402  (bench/ is on sys.path when run as a script)
from thinning_speed import interleaved  # noqa: E402

import compress  # noqa: E402
from apps.deblur.data import get_testing_set, get_training_set, get_validation_set  # noqa: E402
from apps.deblur.evaluation import evaluate, mean_scores, rgb8, sharpness  # noqa: E402
from apps.deblur.models import PRESETS, NLayerDiscriminator, ResnetGenerator  # noqa: E402
from apps.deblur.solver import Adversary, adam, dummy_input  # noqa: E402
from apputils.macs import model_macs  # noqa: E402
from apputils.onnx_export import ExportCheckError, transform_to_onnx  # noqa: E402
from compress.schedule_source import read_schedule  # noqa: E402

SCHEDULES = Path(__file__).resolve().parents[1] / "schedules" / "deblur"
EPOCHS = 8  # scheduler "epochs" per run: the shipped schedules span epochs 0-7
KD = "filters 50% + thinning + KD"
VARIANTS = ("dense", "AGP 50%", "filters 50% + thinning", KD, "QAT w8a8", "post-train w8a8", "WGAN-GP")
INT8 = ("QAT w8a8", "post-train w8a8")
SCHEDULE_FILES = {"AGP 50%": "agp_prune.yaml", "filters 50% + thinning": "filter_prune.yaml",
                  "QAT w8a8": "quantization_linear_w8a8.yaml",
                  "post-train w8a8": "post_train_w8a8.yaml", KD: "kd_filter_prune.yaml"}


def shipped(variant: str) -> dict[str, Any]:
    """The shipped schedule of a variant, as a plain dict."""
    return read_schedule(SCHEDULES / SCHEDULE_FILES[variant]).data


def train(gen: nn.Module, schedule: dict | None, iters: int, args: argparse.Namespace, data_seed: int,
          adversary: Adversary | None = None, warmup: int = 0, curve: Curve | None = None
          ) -> tuple[nn.Module, Any, float]:
    """`iters` generator steps (cosine LR from --lr, --gan_lr with a critic, to 1% of it, after `warmup` steps
    of linear warm-up) with the schedule's hooks, in EPOCHS epochs, each step's output shown to `curve`;
    returns the generator, its scheduler and the process CPU seconds it took."""
    cpu0 = time.process_time()
    per = max(iters // EPOCHS, 1)
    data = get_training_set(None, crop_size=args.crop_size, length=per * args.batch, seed=data_seed,
                            blur_size=args.blur_size, noise=args.noise)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, drop_last=True)
    opt = adam(gen, args.gan_lr if adversary is not None else args.lr, adversary is not None)
    sched = compress.dict_config(gen, opt, schedule, dummy_input=dummy_input()) if schedule else None

    def loss_of(b: dict[str, torch.Tensor]) -> torch.Tensor:
        fake = gen(b["blur"])
        if curve is not None:
            curve.add(b, fake)
        loss = args.content_weight * nn.functional.l1_loss(fake, b["sharp"])
        if adversary is None:
            return loss
        adversary.train_critic(b["sharp"], fake)
        return loss + adversary.generator_loss(fake)

    gen.train()
    cosine_loop(opt, sched, data, loader, EPOCHS, per, loss_of, (adversary.optimizer,) if adversary else (), warmup)
    return gen.eval(), sched, time.process_time() - cpu0


class Curve:
    """--curve K: every K steps of a dense training, the PSNR gain over the blurred input on the training crops
    of those K steps (each drawn fresh: photographs, crops and kernels the model has not seen) and on the
    validation photograph; the figures a recipe is chosen by, without the test photographs."""

    def __init__(self, gen: nn.Module, args: argparse.Namespace):
        self.gen, self.every, self.validation = gen, args.curve, images("validation", args)
        self.steps, self.err, self.blurred = 0, 0.0, 0.0

    def add(self, batch: dict[str, torch.Tensor], fake: torch.Tensor) -> None:
        self.err += float(((fake.detach() - batch["sharp"]) ** 2).mean())
        self.blurred += float(((batch["blur"] - batch["sharp"]) ** 2).mean())
        self.steps += 1
        if self.steps % self.every == 0:
            s = score(self.gen.eval(), self.validation)
            self.gen.train()
            print(f"step {self.steps}: gain over the blurred input {10 * math.log10(self.blurred / self.err):+.3f} dB "
                  f"on steps {self.steps - self.every + 1}-{self.steps}'s training crops, "
                  f"{s['psnr'] - s['blurred_psnr']:+.3f} dB on the validation photograph", flush=True)
            self.err = self.blurred = 0.0


def images(split: str, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    make = get_testing_set if split == "test" else get_validation_set
    return torch.utils.data.DataLoader(make(None, blur_size=args.blur_size, noise=args.noise), batch_size=1)


def score(model: nn.Module, loader: torch.utils.data.DataLoader) -> dict[str, float]:
    """Mean RGB PSNR / SSIM, the blurred input's, and the mean sharpness of the outputs and of the inputs."""
    sharp_out: list[float] = []
    sharp_in: list[float] = []

    def keep(sample: dict, out8: np.ndarray) -> None:
        target = rgb8(sample["sharp"])
        sharp_out.append(sharpness(out8, target))
        sharp_in.append(sharpness(rgb8(sample["blur"]), target))

    means = mean_scores(evaluate(model, loader, torch.device("cpu"), on_image=keep))
    return {**means, "sharpness": float(np.mean(sharp_out)), "blurred_sharpness": float(np.mean(sharp_in))}


class OrtGenerator(nn.Module):
    """An ONNX Runtime session behind a module's forward, so the app's evaluation scores the ONNX model."""

    def __init__(self, path: Path, threads: int):
        super().__init__()
        self.session = session(path, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def node_ms(path: Path, x: np.ndarray, threads: int, runs: int) -> dict[str, tuple[str, float]]:
    """ONNX Runtime's own profile of `runs` runs: node name -> (op type, mean ms per run)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        s.run(None, {"input": x})
    events = json.loads(Path(s.end_profiling()).read_text())
    out: dict[str, tuple[str, float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"].removesuffix("_kernel_time")
            out[name] = (e["args"]["op_name"], out.get(name, ("", 0.0))[1] + e["dur"] / 1000 / runs)
    return out


def where_the_time_goes(onnx: dict[str, str], x: np.ndarray, args: argparse.Namespace) -> None:
    """Per op type, the dense and the thinned generator's ONNX Runtime time, and the speed-up that thinning
    half of the residual blocks' inner filters can give at most: the time outside the blocks stays."""
    for name in ("dense", "filters 50% + thinning"):
        if name not in onnx:
            continue
        nodes = node_ms(Path(onnx[name]), x, args.threads, max(args.runs // 3, 5))
        by_op: dict[str, float] = {}
        for op, ms in nodes.values():
            by_op[op] = by_op.get(op, 0.0) + ms
        total = sum(by_op.values())
        blocks = sum(ms for node, (_, ms) in nodes.items() if "conv_block" in node)
        top = max(nodes.items(), key=lambda kv: kv[1][1])
        print(f"ONNX Runtime profile, {name}: {total:.1f} ms per run; " +
              ", ".join(f"{op} {ms:.1f}" for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1]) if ms >= 0.5) +
              f"; inside the residual blocks {blocks:.1f} ms ({100 * blocks / total:.0f}%); costliest node {top[0]} "
              f"({top[1][0]}, {top[1][1]:.1f} ms)")
        if name == "dense":
            print(f"  halving the work inside the residual blocks bounds the thinned speed-up at "
                  f"{total / (total - blocks / 2):.2f}x")


def describe(model: nn.Module, side: int) -> dict[str, float]:
    dense, effective = model_macs(model, torch.zeros(1, 3, side, side))
    return {"params": sum(p.numel() for p in model.parameters()),
            "nonzero": sum(int((p != 0).sum()) for p in model.parameters()), "macs": dense, "effective_macs": effective}


def post_train(dense: nn.Module, args: argparse.Namespace, seed: int) -> nn.Module:
    """The shipped post-training schedule on a copy of `dense`, calibrated on 8 training batches."""
    model = copy.deepcopy(dense).eval()
    sched = compress.dict_config(model, None, shipped("post-train w8a8"))
    data = get_training_set(None, crop_size=args.crop_size, length=8 * args.batch, seed=seed + 7,
                            blur_size=args.blur_size, noise=args.noise)
    sched.policies[0].component.calibrate(b["blur"] for b in torch.utils.data.DataLoader(data, batch_size=args.batch))
    return model


def dense_model(args: argparse.Namespace, seed: int) -> tuple[nn.Module, float]:
    """The seed's dense generator and the CPU seconds its training took (as recorded when it was trained),
    from --cache when a run with the same training arguments saved it there."""
    recipe = [args.model, args.dense_iters, args.batch, args.crop_size, args.blur_size, args.noise, args.lr,
              args.content_weight, args.threads, seed] + ([args.warmup] if args.warmup else [])  # older keys stay
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:20]
    path = Path(args.cache) / f"dense_{key}.pt" if args.cache else None
    torch.manual_seed(seed)
    dense = ResnetGenerator(**PRESETS[args.model])
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        dense.load_state_dict(saved["model"])
        return dense.eval(), float(saved["cpu_s"])
    dense, _, cpu = train(dense, None, args.dense_iters, args, seed, warmup=args.warmup)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": dense.state_dict(), "cpu_s": cpu}, path)
    return dense, cpu


def run_seed(args: argparse.Namespace, seed: int, folder: str) -> dict[str, Any]:
    """Everything for one seed: the dense model, the variants, their scores, ONNX files (seed 0's kept)."""
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.time()
    loader = images(args.split, args)
    dense, dense_cpu = dense_model(args, seed)
    out: dict[str, Any] = {"seed": seed, "dense_cpu_s": dense_cpu, "rows": {}, "checks": {}, "onnx": {}}
    out["rows"]["dense, before fine-tuning"] = {**score(dense, loader), **describe(dense, args.size)}
    check_input = next(iter(loader))["blur"][:, :, :args.size, :args.size]
    for variant in args.variants:
        torch.manual_seed(seed + 1)
        start = copy.deepcopy(dense)
        if variant == "post-train w8a8":
            reference = out.get("_finetuned") or train(start, None, args.finetune_iters, args, seed + 1)[0]
            model = post_train(reference, args, seed)
        elif variant == "WGAN-GP":
            critic = NLayerDiscriminator(ndf=args.ndf)
            adversary = Adversary(critic, adam(critic, args.gan_lr, True), args.critic_iters, 10.0)
            model = train(start, None, args.finetune_iters, args, seed + 1, adversary)[0]
        else:
            schedule = shipped(variant) if variant in SCHEDULE_FILES else None
            if variant == KD:  # the distillation term weighted like the content loss
                schedule["distillers"]["kd"]["distill_weight"] = args.content_weight
            model = train(start, schedule, args.finetune_iters, args, seed + 1)[0]
            if variant == "dense":
                out["_finetuned"] = model
        row = {**score(model, loader), **describe(model, args.size)}
        if variant in INT8 or (seed == args.seeds[0] and variant in ("dense", "filters 50% + thinning", KD)):
            path = Path(folder) / f"seed{seed}_{variant.replace(' ', '_').replace('%', '')}.onnx"
            try:
                check = transform_to_onnx(model, path, check_input, variant in INT8)
            except ExportCheckError as err:  # recorded; the kept model is still scored in ONNX Runtime
                check = {**err.check, "passed": False}
                path = Path(err.check["failed_path"])
                print(f"seed {seed} {variant}: INT8 export check FAILED: {err}", flush=True)
            out["onnx"][variant] = str(path)
            if variant in INT8:
                out["checks"][variant] = {k: check[k] for k in ("passed", "max_abs_diff", "within_tolerance",
                                                                "integer_ops")}
                ort_row = score(OrtGenerator(path, args.threads), loader)
                out["rows"][f"{variant}, INT8 ONNX Runtime"] = {**ort_row, **describe(model, args.size)}
        out["rows"][variant] = row
        print(f"seed {seed} {variant}: PSNR {row['psnr']:.3f} (blurred {row['blurred_psnr']:.3f}) "
              f"SSIM {row['ssim']:.4f} sharpness {row['sharpness']:.3f}  [{time.time() - t0:.0f} s]", flush=True)
    out.pop("_finetuned", None)
    return out


def _row_order(results: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [n for n in r["rows"] if n not in names]
    return names


def report(results: list[dict[str, Any]], latencies: dict[str, float], args: argparse.Namespace) -> None:
    """The table (means over seeds, per-seed values of the PSNR and its drop) and the target checks."""
    seeds = [r["seed"] for r in results]
    first = results[0]["rows"]
    blurred = [r["rows"]["dense, before fine-tuning"]["blurred_psnr"] for r in results]
    print(f"\n{args.split} photographs, RGB, blur_size {args.blur_size}, noise {args.noise}; seeds {seeds}; "
          f"dense {args.dense_iters} iters, variants +{args.finetune_iters} iters (batch {args.batch}, "
          f"{args.crop_size}x{args.crop_size} crops, lr {args.lr})")
    print("dense training CPU time per seed: " + ", ".join(f"{r['dense_cpu_s'] / 60:.1f} min" for r in results))
    head = ("| model | params | non-zero | GMACs | eff. GMACs | PSNR | SSIM | sharpness | vs dense (mean, spread) "
            "| per seed | ORT ms | speed-up |")
    print(head)
    print("|" + "---|" * 12)
    b = first["dense, before fine-tuning"]
    print(f"| blurred input | | | | | {statistics.mean(blurred):.3f} | {b['blurred_ssim']:.4f} | "
          f"{b['blurred_sharpness']:.3f} | | {', '.join(f'{v:.3f}' for v in blurred)} | | |")
    reference = [r["rows"].get("dense", {}).get("psnr") for r in results]
    for name in _row_order(results):
        rows = [r["rows"][name] for r in results if name in r["rows"]]
        psnrs = [x["psnr"] for x in rows]
        m = {k: statistics.mean(x[k] for x in rows) for k in ("ssim", "sharpness")}
        d = rows[0]
        drops = [p - ref for p, ref in zip(psnrs, reference, strict=False) if ref is not None]
        vs = (f"{statistics.mean(drops):+.3f} ({min(drops):+.3f} .. {max(drops):+.3f})"
              if drops and name not in ("dense", "dense, before fine-tuning") else "")
        ms = f"{latencies[name]:.1f}" if name in latencies else ""
        speed = f"{latencies['dense'] / latencies[name]:.2f}x" if name in latencies and "dense" in latencies else ""
        print(f"| {name} | {d['params']} | {d['nonzero']} | {d['macs'] / 1e9:.2f} | {d['effective_macs'] / 1e9:.2f} "
              f"| {statistics.mean(psnrs):.3f} | {m['ssim']:.4f} | {m['sharpness']:.3f} | {vs} | "
              f"{', '.join(f'{p:.3f}' for p in psnrs)} | {ms} | {speed} |")
    for r in results:
        for variant, check in r["checks"].items():
            print(f"seed {r['seed']} {variant} INT8 export check: {check}")
    _targets(results, latencies)


def _targets(results: list[dict[str, Any]], latencies: dict[str, float]) -> None:
    def mean_of(name: str, key: str = "psnr") -> float | None:
        values = [r["rows"][name][key] for r in results if name in r["rows"]]
        return statistics.mean(values) if values else None

    dense, before = mean_of("dense"), mean_of("dense, before fine-tuning")
    blurred = mean_of("dense, before fine-tuning", "blurred_psnr")
    lines = [f"dense (before fine-tuning) vs blurred input: {before - blurred:+.3f} dB (target >= +2.0)"]
    if dense is not None:
        lines.append(f"dense (fine-tuned) vs blurred input: {dense - blurred:+.3f} dB")
        for name, limit in (("AGP 50%", 0.10), ("filters 50% + thinning", 0.30), (KD, 0.30), ("QAT w8a8", 0.10)):
            value = mean_of(name)
            if value is not None:
                lines.append(f"{name} vs dense: {value - dense:+.3f} dB (target >= -{limit:.2f})")
        for name in INT8:
            ort_q = mean_of(f"{name}, INT8 ONNX Runtime")
            if ort_q is not None:
                lines.append(f"{name} INT8 ONNX Runtime vs PyTorch: {ort_q - mean_of(name):+.4f} dB")
    if "dense" in latencies and "filters 50% + thinning" in latencies:
        lines.append(f"thinned vs dense in ONNX Runtime: {latencies['dense'] / latencies['filters 50% + thinning']:.2f}x "
                     "(target >= 1.6x)")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="DeblurGAN-CPU", choices=list(PRESETS))
    p.add_argument("--dense_iters", type=int, default=2400)
    p.add_argument("--finetune_iters", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop_size", type=int, default=64)
    p.add_argument("--blur_size", type=int, default=15)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100,
                   help="dense training: the LR rises linearly over the first N steps (chosen on validation: without "
                        "it the untrained generator's first steps move it far from its input)")
    p.add_argument("--content_weight", type=float, default=100.0)
    p.add_argument("--critic_iters", type=int, default=5)
    p.add_argument("--ndf", type=int, default=16, help="critic width (the app's default for DeblurGAN-CPU)")
    p.add_argument("--gan_lr", type=float, default=1e-4, help="LR of both networks in the WGAN-GP row (DeblurGAN's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes")
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads per process")
    p.add_argument("--runs", type=int, default=30, help="timed ONNX Runtime runs per model")
    p.add_argument("--size", type=int, default=256, help="latency and MACs input: 1 x 3 x size x size")
    p.add_argument("--split", default="test", choices=["test", "validation"],
                   help="score the test photographs, or the validation photograph (to choose a recipe)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--curve", type=int, default=0, metavar="K",
                   help="only train the dense generator, printing its gain on the training crops and on the "
                        "validation photograph every K steps (to choose a recipe)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="keep the dense generators here and reuse them in a later run with the same training "
                        "arguments (the figures are the same with or without it)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.curve:
        for seed in args.seeds:
            torch.manual_seed(seed)
            gen = ResnetGenerator(**PRESETS[args.model])
            _, _, cpu = train(gen, None, args.dense_iters, args, seed, warmup=args.warmup, curve=Curve(gen, args))
            print(f"seed {seed}: {cpu / 60:.1f} CPU minutes (with the validation scoring)")
        return
    with tempfile.TemporaryDirectory() as folder:
        if args.jobs > 1:
            with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
                results = pool.starmap(run_seed, [(args, s, folder) for s in args.seeds])
        else:
            results = [run_seed(args, s, folder) for s in args.seeds]
        onnx = results[0]["onnx"]
        x = torch.rand(1, 3, args.size, args.size).numpy()
        names = [n for n in ("dense", "filters 50% + thinning", KD, *INT8) if n in onnx]
        sessions = [session(Path(onnx[n]), args.threads) for n in names]
        runners = [(lambda s=s: s.run(None, {"input": x})) for s in sessions]
        times = interleaved(runners, args.runs) if runners else []
        latencies = {(f"{n}, INT8 ONNX Runtime" if n in INT8 else n): 1000 * t for n, t in zip(names, times, strict=True)}
        where_the_time_goes(onnx, x, args)
    report(results, latencies, args)
    print(f"total {time.time() - t0:.0f} s wall")


if __name__ == "__main__":
    main()
