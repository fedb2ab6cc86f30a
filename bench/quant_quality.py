"""Quantization benchmark: quality of each quantizer vs dense, and INT8 vs FP32 ONNX Runtime latency.

C2SRCNN (the SR app's default model): for each of `--seeds` a dense C2SRCNN trains `--dense_iters`
minibatches; every variant then starts from that checkpoint with the same `--finetune_iters` budget,
data stream and LR curve (Adam, cosine from --ft_lr to 1% of it): dense (no quantization, the
reference), DoReFa w8a8 and w4a8, PACT w4a4 (first / last conv 6-bit weights, 8-bit inputs),
range-linear w8a8 and w4a8 QAT (the shipped schedules in schedules/sr/), range-linear w8a8 QAT on the
full int8 weight grid (`weight_range: full`), and post-training w8a8 (the fine-tuned dense model
calibrated on 8 training batches, no training; also with the first / last conv float, and on the full
grid). The variants train in a different order for each seed (rotated). Quality: PSNR / SSIM on the
embedded test photographs (Y channel, border = scale) of the PyTorch fake-quantized model and of the
INT8 ONNX model run by ONNX Runtime, means over seeds with each seed's drop beside them (seed-to-seed
differences are a few hundredths of a dB).

Weight grids: `portable` (the default) keeps int8 weight codes within +-64, exact in ONNX Runtime on
every x86 CPU; `full` uses +-127, exact only where the u8 x s8 kernels do not saturate (VNNI). The bench
says which kind of CPU it ran on (apputils.ort_probe); on a saturating CPU the full-grid models fail
their export check: they are still timed and scored in ONNX Runtime (what a user would get there) and
their check is printed as FAILED.

EDSR (64 channels, 8 residual blocks, apps.sr.models.EDSR): trained `--edsr_iters`, post-training
quantized w8a8 (portable and full grid) and exported; its rows show the INT8 speed of a network with
wide layers, which C2SRCNN's 12-channel full-resolution layers do not have.

Latency: FP32 ONNX vs INT8 QDQ ONNX in ONNX Runtime (CPU provider, --threads intra-op threads, one
inter-op thread), a fixed input per network (output 1 x 1 x --size x --size), `--runs` runs each after
3 warm-up runs each, all models interleaved run by run in an order rotated every run (so no model
always runs first or after the same one); medians and ratios to the same network's FP32 are printed.

Run by hand (not in CI), e.g.:
    python bench/quant_quality.py --threads 1                                     # full budget
    python bench/quant_quality.py --dense_iters 300 --finetune_iters 100 --seeds 0 --edsr_iters 0   # a quick look
    python bench/quant_quality.py --latency_only                                  # ONNX latency only
"""
from __future__ import annotations

import argparse
import copy
import logging
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

from sr_training import train_sr  # noqa: E402  (bench/ is on sys.path when run as a script)

import compress  # noqa: E402
from apps.sr.data import get_testing_set, get_training_set  # noqa: E402
from apps.sr.evaluation import evaluate, mean_scores, model_input  # noqa: E402
from apps.sr.models import C2SRCNN, EDSR, build_model  # noqa: E402
from apputils.checkpoint import load_checkpoint, rebuild_model  # noqa: E402
from apputils.onnx_export import ExportCheckError, transform_to_onnx  # noqa: E402
from apputils.ort_probe import cpu_kind  # noqa: E402
from compress.schedule_source import read_schedule  # noqa: E402

SCHEDULES = Path(__file__).resolve().parents[1] / "schedules" / "sr"
EPOCHS = 8  # scheduler "epochs" per fine-tune run: the shipped schedules span epochs 0-7


def shipped(name: str, **quantizer_changes: Any) -> dict[str, Any]:
    """A shipped schedule's quantizer and its policy (LR schedulers dropped: the bench sets the LR)."""
    data = read_schedule(SCHEDULES / name).data
    (qname, qcfg), = data["quantizers"].items()
    qcfg = {**qcfg, **quantizer_changes}
    policy = next(p for p in data["policies"] if "quantizer" in p)
    return {"version": 1, "quantizers": {qname: qcfg}, "policies": [policy]}


VARIANTS: list[tuple[str, dict[str, Any] | None]] = [
    ("dense", None),
    ("DoReFa w8a8", shipped("quantization_DoReFa.yaml")),
    ("DoReFa w4a8", shipped("quantization_DoReFa.yaml", bits_weights=4)),
    ("PACT w4a4", shipped("quantization_PACT.yaml")),
    ("linear w8a8 QAT", shipped("quantization_linear_w8a8.yaml")),
    ("linear w4a8 QAT", shipped("quantization_linear_w8a8.yaml", bits_weights=4)),
    ("linear w8a8 QAT, full grid", shipped("quantization_linear_w8a8.yaml", weight_range="full")),
]


def rotated(items: list, by: int) -> list:
    """`items` starting at position `by` (mod len): a different order each round, every item once."""
    k = by % len(items)
    return items[k:] + items[:k]


def train(model: nn.Module, schedule: dict | None, iters: int, lr: float, args: argparse.Namespace,
          seed: int) -> tuple[nn.Module, Any]:
    """`iters` Adam steps (cosine LR from lr to 1% of it) with the schedule's hooks, in EPOCHS epochs."""
    return train_sr(model, schedule, iters, lr, scale=args.scale, crop=args.crop, batch=args.batch, seed=seed,
                    epochs=EPOCHS)


def post_train(dense: nn.Module, args: argparse.Namespace, seed: int, overrides: dict | None = None,
               crop: int | None = None, weight_range: str = "portable") -> nn.Module:
    """The shipped post-training w8a8 schedule on a copy of `dense`, calibrated on 8 training batches."""
    model = copy.deepcopy(dense).eval()
    schedule = shipped("post_train_w8a8.yaml", weight_range=weight_range,
                       **({"overrides": overrides} if overrides else {}))
    sched = compress.dict_config(model, None, schedule)
    data = get_training_set(args.scale, None, crop_size=crop or args.crop, length=8 * args.batch, seed=seed + 7)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch)
    sched.policies[0].component.calibrate(model_input(model, b, "cpu") for b in loader)
    return model


class OrtModel(nn.Module):
    """An ONNX Runtime session behind a module's forward, so the app's evaluation scores the ONNX model."""

    def __init__(self, path: Path, threads: int, input_kind: str):
        super().__init__()
        self.INPUT_KIND = input_kind
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])


def score(model: nn.Module, scale: int) -> dict[str, float]:
    loader = torch.utils.data.DataLoader(get_testing_set(scale, None), batch_size=1)
    return mean_scores(evaluate(model, loader, torch.device("cpu"), scale))


def export(model: nn.Module, path: Path, dummy: torch.Tensor, quantize: bool) -> tuple[Path, dict[str, Any]]:
    """transform_to_onnx; a model that fails its check (the full grid on a saturating CPU) is kept for
    timing and scoring from its `.failed` file, with the failed check."""
    try:
        return path, transform_to_onnx(model, path, dummy, quantize)
    except ExportCheckError as err:
        print(f"  export check FAILED: {err}", flush=True)
        return Path(err.check["failed_path"]), err.check


def latency(runs: dict[str, tuple[Path, np.ndarray]], args: argparse.Namespace) -> dict[str, float]:
    """Median ms per run of each ONNX file on its fixed input, runs interleaved across files in an order
    rotated every run, after 3 warm-up runs of each."""
    sessions = {}
    for name, (path, _) in runs.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for name, s in sessions.items():
        for _ in range(3):
            s.run(None, {"input": runs[name][1]})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(args.runs):
        for name in rotated(list(sessions), r):
            t0 = time.perf_counter()
            sessions[name].run(None, {"input": runs[name][1]})
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def dense_base(args: argparse.Namespace, seed: int) -> tuple[nn.Module, str]:
    """The dense C2SRCNN every variant starts from: --dense_ckpt, or pre-trained here."""
    if args.dense_ckpt:
        ckpt = load_checkpoint(args.dense_ckpt, "SR")
        if ckpt.get("schedule") or ckpt["arch"]["name"] != "C2SRCNN":
            sys.exit(f"{args.dense_ckpt}: expected a dense C2SRCNN checkpoint (no schedule), got "
                     f"{ckpt['arch']['name']} with schedule {bool(ckpt.get('schedule'))}")
        base, _, _ = rebuild_model(ckpt, build_model)
        args.scale = int(ckpt["arch"]["kwargs"].get("upscale_factor", args.scale))
        opts = ckpt.get("options", {})
        return base.eval(), (f"dense checkpoint {args.dense_ckpt} (train.py, epoch {ckpt['epoch']}, "
                             f"{opts.get('nEpochs')} x {opts.get('iters_per_epoch')} iters, batch "
                             f"{opts.get('batchSize')})")
    torch.manual_seed(seed)
    base, _ = train(C2SRCNN(1, args.scale), None, args.dense_iters, args.lr, args, seed=seed)
    return base.eval(), f"dense pre-training {args.dense_iters} iters (Adam lr {args.lr} cosine)"


def failed_mark(check: dict[str, Any]) -> str:
    """A label suffix for a model whose export check failed on this CPU."""
    return "" if check["passed"] else ", check FAILED on this CPU"


C2_ENDS = {"first_part\\.0|last_part": {"bits_weights": None, "bits_activations": None}}
C2_INT8 = ["linear w8a8 QAT", "linear w8a8 QAT, full grid", "post-train w8a8", "post-train w8a8, full grid",
           "post-train w8a8, first/last float"]
#: (portable variant, its full-grid twin) whose PSNR and speed the bench compares
GRID_PAIRS = [("linear w8a8 QAT", "linear w8a8 QAT, full grid"), ("post-train w8a8", "post-train w8a8, full grid")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--dense_iters", type=int, default=2000)
    p.add_argument("--finetune_iters", type=int, default=800)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=36)
    p.add_argument("--lr", type=float, default=1e-3, help="dense pre-training LR")
    p.add_argument("--ft_lr", type=float, default=1e-3,
                   help="fine-tuning LR (every variant; QAT needs it high enough to move weights onto the grid)")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--runs", type=int, default=50, help="timed ONNX Runtime runs per model")
    p.add_argument("--size", type=int, default=256, help="latency output is 1 x 1 x size x size")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="one dense model and fine-tune data stream per seed; the table shows means over seeds")
    p.add_argument("--edsr_iters", type=int, default=2000,
                   help="EDSR (64 channels, 8 blocks) dense training iters for its post-training INT8 rows "
                        "(0: skip EDSR)")
    p.add_argument("--dense_ckpt", default=None, metavar="CKPT", help="start from this dense C2SRCNN checkpoint "
                   "(e.g. checkpoints/<run>/best.pth from train.py) instead of pre-training --dense_iters here; "
                   "one seed")
    p.add_argument("--latency_only", action="store_true", help="skip training: untrained models, "
                   "post-training quantized, for the latency figures only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    print(f"CPU (ONNX Runtime probe): {cpu_kind()}", flush=True)
    seeds = args.seeds[:1] if args.dense_ckpt or args.latency_only else args.seeds
    runs: dict[str, list[dict[str, float]]] = {}  # variant -> scores per seed (PyTorch, then ONNX rows)
    dummy = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    tmp = tempfile.TemporaryDirectory()
    folder = Path(tmp.name)
    pretrain = ""
    for seed_index, seed in enumerate(seeds):
        if args.latency_only:
            models: dict[str, nn.Module] = {"dense": C2SRCNN(1, args.scale).eval()}
        else:
            t0 = time.perf_counter()
            base, pretrain = dense_base(args, seed)
            print(f"seed {seed}: {pretrain}: {time.perf_counter() - t0:.0f}s", flush=True)
            models = {}
            for name, schedule in rotated(VARIANTS, seed_index):  # same budget and data, same checkpoint
                t0 = time.perf_counter()
                models[name], _ = train(copy.deepcopy(base), schedule, args.finetune_iters, args.ft_lr, args,
                                        seed=seed + 1)
                runs.setdefault(name, []).append(score(models[name], args.scale))
                print(f"seed {seed}: {name:<34} PSNR {runs[name][-1]['psnr']:.3f} dB "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
        models["post-train w8a8"] = post_train(models["dense"], args, seed)
        models["post-train w8a8, full grid"] = post_train(models["dense"], args, seed, weight_range="full")
        models["post-train w8a8, first/last float"] = post_train(models["dense"], args, seed, C2_ENDS)
        c2_files, c2_checks = {}, {}
        c2_files["FP32 (dense)"], c2_checks["FP32 (dense)"] = export(models["dense"], folder / "fp32.onnx", dummy,
                                                                     False)
        for name in (n for n in C2_INT8 if n in models):
            c2_files[f"INT8 {name}"], c2_checks[f"INT8 {name}"] = export(
                models[name], folder / f"c2_int8_{len(c2_files)}.onnx", dummy, True)
        if not args.latency_only:
            for name in ("post-train w8a8", "post-train w8a8, full grid", "post-train w8a8, first/last float"):
                runs.setdefault(name, []).append(score(models[name], args.scale))
            for name, path in c2_files.items():
                runs.setdefault(f"{name} in ONNX Runtime{failed_mark(c2_checks[name])}", []).append(
                    score(OrtModel(path, args.threads, "bicubic"), args.scale))
            print(f"seed {seed}: post-training and ONNX rows scored", flush=True)

    edsr_files: dict[str, Path] = {}
    edsr_checks: dict[str, dict[str, Any]] = {}
    edsr_rows: dict[str, dict[str, float]] = {}
    if args.edsr_iters or args.latency_only:
        torch.manual_seed(seeds[0])
        edsr = EDSR(1, args.scale).eval()
        if not args.latency_only:
            t0 = time.perf_counter()
            edsr, _ = train_sr(edsr, None, args.edsr_iters, args.lr, scale=args.scale, crop=2 * args.crop,
                               batch=args.batch, seed=seeds[0], epochs=EPOCHS)
            print(f"EDSR dense training {args.edsr_iters} iters: {time.perf_counter() - t0:.0f}s", flush=True)
        edsr_models = {"EDSR FP32": (edsr, False),
                       "EDSR INT8 post-train w8a8": (post_train(edsr, args, seeds[0], crop=2 * args.crop), True),
                       "EDSR INT8 post-train w8a8, full grid": (post_train(edsr, args, seeds[0], crop=2 * args.crop,
                                                                           weight_range="full"), True)}
        edsr_dummy = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
        for i, (name, (model, quantize)) in enumerate(edsr_models.items()):
            edsr_files[name], edsr_checks[name] = export(model, folder / f"edsr_{i}.onnx", edsr_dummy, quantize)
        if not args.latency_only:
            edsr_rows = {"EDSR dense (PyTorch)": score(edsr, args.scale)}
            for name, (model, quantize) in edsr_models.items():
                if quantize:
                    label = name.replace("EDSR INT8 ", "EDSR ")
                    edsr_rows[f"{label} (PyTorch)"] = score(model, args.scale)
                    edsr_rows[f"{label} (ONNX Runtime{failed_mark(edsr_checks[name])})"] = score(
                        OrtModel(edsr_files[name], args.threads, "lr"), args.scale)

    rng = np.random.default_rng(0)
    hr_input = rng.random((1, 1, args.size, args.size), dtype=np.float32)
    lr_input = rng.random((1, 1, args.size // args.scale, args.size // args.scale), dtype=np.float32)
    timed = {n: (f, hr_input) for n, f in c2_files.items()} | {n: (f, lr_input) for n, f in edsr_files.items()}
    ms = latency(timed, args)
    sizes = {name: path.stat().st_size for name, (path, _) in timed.items()}
    checks = c2_checks | edsr_checks
    tmp.cleanup()

    print(f"\nx{args.scale} on the embedded test photographs (astronaut, chelsea, coffee); Y channel, border = scale.\n")
    if runs:
        rows = {name: {k: float(np.mean([r[k] for r in rs])) for k in ("psnr", "ssim")} for name, rs in runs.items()}
        dense = rows["dense"]
        print(f"C2SRCNN: {pretrain}, then {args.finetune_iters} iters per variant (Adam lr {args.ft_lr} cosine); "
              f"batch {args.batch}, crop {args.crop}; {args.threads} threads; means over seeds {seeds}\n")
        head = f"{'variant':<76}{'PSNR':>9}{'SSIM':>9}{'vs dense':>10}   per seed"
        print(head)
        print("-" * len(head))
        bic = runs["dense"][0]
        print(f"{'bicubic':<76}{bic['bicubic_psnr']:>9.3f}{bic['bicubic_ssim']:>9.4f}")
        for name, r in rows.items():
            per_seed = ", ".join(f"{x['psnr'] - d['psnr']:+.3f}" for x, d in zip(runs[name], runs["dense"], strict=True))
            label = name if "ONNX Runtime" in name else f"{name} (PyTorch)"
            print(f"{label:<76}{r['psnr']:>9.3f}{r['ssim']:>9.4f}{r['psnr'] - dense['psnr']:>+10.3f}   {per_seed}")
        if edsr_rows:
            ref = edsr_rows["EDSR dense (PyTorch)"]
            print(f"\nEDSR (64 channels, 8 blocks): dense training {args.edsr_iters} iters (Adam lr {args.lr} cosine, "
                  f"batch {args.batch}, crop {2 * args.crop}), seed {seeds[0]}; post-training w8a8, no fine-tuning\n")
            for name, r in edsr_rows.items():
                print(f"{name:<76}{r['psnr']:>9.3f}{r['ssim']:>9.4f}{r['psnr'] - ref['psnr']:>+10.3f}")
    print(f"\nONNX Runtime {ort.__version__} CPU latency, output 1x1x{args.size}x{args.size} (C2SRCNN input: the "
          f"bicubic image; EDSR: the LR image), {args.threads} intra-op threads, median of {args.runs} interleaved "
          f"runs:\n")
    head = (f"{'model':<48}{'ms':>9}{'vs FP32':>9}{'KiB':>8}{'integer kernels':>34}{'max code':>10}"
            f"{'check (share within, max diff)':>34}")
    print(head)
    print("-" * len(head))
    for name in timed:
        fp32 = ms["EDSR FP32"] if name.startswith("EDSR") else ms["FP32 (dense)"]
        check = checks[name]
        ops = ", ".join(f"{k} x{v}" for k, v in check["integer_ops"].items()) or "-"
        code = str(check["max_weight_code"]) if check["quantized"] else "-"
        verdict = (f"{'ok' if check['passed'] else 'FAILED'} ({check['within_tolerance']:.4%}, "
                   f"{check['max_abs_diff']:.3g})")
        print(f"{name:<48}{ms[name]:>9.1f}{fp32 / ms[name]:>8.2f}x{sizes[name] / 1024:>8.1f}{ops:>34}{code:>10}"
              f"{verdict:>34}")
    print(f"\nportable (codes within +-64) vs full (+-127) int8 weight grid on this CPU ({cpu_kind()}):")
    pairs = [(f"INT8 {a}", f"INT8 {b}") for a, b in GRID_PAIRS]
    pairs.append(("EDSR INT8 post-train w8a8", "EDSR INT8 post-train w8a8, full grid"))
    for portable, full in pairs:
        if portable not in ms or full not in ms:
            continue
        line = f"  {portable.replace('INT8 ', ''):<34} latency full / portable {ms[full] / ms[portable]:.3f}"
        if runs and not portable.startswith("EDSR"):
            line += f"; PSNR (PyTorch) portable - full {rows[portable[5:]]['psnr'] - rows[full[5:]]['psnr']:+.3f} dB"
        elif edsr_rows:
            cost = (edsr_rows["EDSR post-train w8a8 (PyTorch)"]["psnr"]
                    - edsr_rows["EDSR post-train w8a8, full grid (PyTorch)"]["psnr"])
            line += f"; PSNR (PyTorch) portable - full {cost:+.3f} dB"
        print(line + f"; full-grid check {'ok' if checks[full]['passed'] else 'FAILED'} here")
    print(f"\ntotal {time.perf_counter() - start:.0f}s")
    print("\ntargets:")
    if runs:
        for name, tol in (("DoReFa w8a8", 0.05), ("linear w8a8 QAT", 0.05), ("post-train w8a8", 0.05),
                          ("post-train w8a8, first/last float", 0.05), ("DoReFa w4a8", 0.25), ("PACT w4a4", 0.25),
                          ("linear w4a8 QAT", 0.25)):
            drop = rows["dense"]["psnr"] - rows[name]["psnr"]
            print(f"  {name} within {tol} dB of dense: {drop:+.3f} dB below (mean) -> "
                  f"{'met' if drop <= tol else 'NOT met'}")
    for net, fp32_name in (("C2SRCNN", "FP32 (dense)"), ("EDSR", "EDSR FP32")):
        ratios = [(ms[fp32_name] / v, k) for k, v in ms.items()
                  if "INT8" in k and k.startswith("EDSR") == (net == "EDSR") and checks[k]["passed"]]
        if ratios:
            best = max(ratios)
            print(f"  {net}: INT8 ONNX (check passed) >= 1.5x faster than FP32 ONNX: best {best[0]:.2f}x ({best[1]}) -> "
                  f"{'met' if best[0] >= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
