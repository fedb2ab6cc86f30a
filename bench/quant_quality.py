"""Quantization benchmark for C2SRCNN: quality of each quantizer vs dense, and INT8 vs FP32 ONNX Runtime latency.

A dense C2SRCNN trains `--dense_iters` minibatches; every variant then starts from that checkpoint with
the same `--finetune_iters` budget, data stream and LR curve (Adam, cosine from --ft_lr to 1% of it):
dense (no quantization, the reference), DoReFa w8a8 and w4a8, PACT w4a4 (first / last conv 7-bit weights,
8-bit inputs), range-linear w8a8 and w4a8 QAT (the shipped schedules in schedules/sr/), and post-training w8a8
(the fine-tuned dense model calibrated on 8 training batches, no training). Quality: PSNR / SSIM on the
embedded test photographs (Y channel, border = scale) of the PyTorch fake-quantized model, and for the
INT8 exports the PSNR of the ONNX Runtime INT8 model itself.

Latency: FP32 ONNX vs INT8 QDQ ONNX in ONNX Runtime (CPU provider, --threads intra-op threads, one
inter-op thread), the same fixed input (1 x 1 x --size x --size), `--runs` runs each after warm-up,
variants interleaved run by run; medians and ratios are printed.

Run by hand (not in CI), e.g.:
    python bench/quant_quality.py                                          # full budget
    python bench/quant_quality.py --dense_iters 300 --finetune_iters 100   # a quick look
    python bench/quant_quality.py --latency_only                           # ONNX latency only
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
from apps.sr.models import C2SRCNN, build_model  # noqa: E402
from apputils.checkpoint import load_checkpoint, rebuild_model  # noqa: E402
from apputils.onnx_export import transform_to_onnx  # noqa: E402
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
]


def train(model: nn.Module, schedule: dict | None, iters: int, lr: float, args: argparse.Namespace,
          seed: int) -> tuple[nn.Module, Any]:
    """`iters` Adam steps (cosine LR from lr to 1% of it) with the schedule's hooks, in EPOCHS epochs."""
    return train_sr(model, schedule, iters, lr, scale=args.scale, crop=args.crop, batch=args.batch, seed=seed,
                    epochs=EPOCHS)


def post_train(dense: nn.Module, args: argparse.Namespace, overrides: dict | None = None) -> nn.Module:
    """The shipped post-training w8a8 schedule on a copy of `dense`, calibrated on 8 training batches."""
    model = copy.deepcopy(dense).eval()
    schedule = shipped("post_train_w8a8.yaml", **({"overrides": overrides} if overrides else {}))
    sched = compress.dict_config(model, None, schedule)
    data = get_training_set(args.scale, None, crop_size=args.crop, length=8 * args.batch, seed=args.seed + 7)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch)
    sched.policies[0].component.calibrate(model_input(model, b, "cpu") for b in loader)
    return model


class OrtModel(nn.Module):
    """An ONNX Runtime session behind a module's forward, so the app's evaluation scores the ONNX model."""

    INPUT_KIND = "bicubic"

    def __init__(self, path: Path, threads: int):
        super().__init__()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])


def score(model: nn.Module, scale: int) -> dict[str, float]:
    loader = torch.utils.data.DataLoader(get_testing_set(scale, None), batch_size=1)
    return mean_scores(evaluate(model, loader, torch.device("cpu"), scale))


def latency(paths: dict[str, Path], args: argparse.Namespace) -> dict[str, float]:
    """Median ms per run of each ONNX file on the same input, runs interleaved across files."""
    x = np.random.default_rng(0).random((1, 1, args.size, args.size), dtype=np.float32)
    sessions = {}
    for name, path in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"input": x})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.runs):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"input": x})
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


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
    p.add_argument("--size", type=int, default=256, help="latency input is 1 x 1 x size x size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dense_ckpt", default=None, metavar="CKPT", help="start from this dense C2SRCNN checkpoint "
                   "(e.g. checkpoints/<run>/best.pth from train.py) instead of pre-training --dense_iters here")
    p.add_argument("--latency_only", action="store_true", help="skip training: an untrained C2SRCNN, "
                   "post-training quantized, for the latency figures only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    rows: dict[str, dict[str, float]] = {}
    torch.manual_seed(args.seed)
    if args.latency_only:
        reference = C2SRCNN(1, args.scale).eval()
        models: dict[str, nn.Module] = {}
    else:
        t0 = time.perf_counter()
        if args.dense_ckpt:
            ckpt = load_checkpoint(args.dense_ckpt, "SR")
            if ckpt.get("schedule") or ckpt["arch"]["name"] != "C2SRCNN":
                sys.exit(f"{args.dense_ckpt}: expected a dense C2SRCNN checkpoint (no schedule), got "
                         f"{ckpt['arch']['name']} with schedule {bool(ckpt.get('schedule'))}")
            base, _, _ = rebuild_model(ckpt, build_model)
            args.scale = int(ckpt["arch"]["kwargs"].get("upscale_factor", args.scale))
            opts = ckpt.get("options", {})
            pretrain = (f"dense checkpoint {args.dense_ckpt} (train.py, epoch {ckpt['epoch']}, "
                        f"{opts.get('nEpochs')} x {opts.get('iters_per_epoch')} iters, batch {opts.get('batchSize')})")
        else:
            base, _ = train(C2SRCNN(1, args.scale), None, args.dense_iters, args.lr, args, seed=args.seed)
            pretrain = f"dense pre-training {args.dense_iters} iters (Adam lr {args.lr} cosine)"
        base.eval()
        print(f"{pretrain}: {time.perf_counter() - t0:.0f}s", flush=True)
        models = {}
        for name, schedule in VARIANTS:  # same budget, same data stream, from the same checkpoint
            t0 = time.perf_counter()
            model, _ = train(copy.deepcopy(base), schedule, args.finetune_iters, args.ft_lr, args,
                             seed=args.seed + 1)
            models[name] = model
            rows[name] = score(model, args.scale)
            print(f"{name:<20} PSNR {rows[name]['psnr']:.3f} dB  SSIM {rows[name]['ssim']:.4f}  "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
        reference = models["dense"]
    ends = {"first_part\\.0|last_part": {"bits_weights": None, "bits_activations": None}}
    models["post-train w8a8"] = post_train(reference, args)
    models["post-train w8a8, first/last float"] = post_train(reference, args, ends)
    if not args.latency_only:
        for name in ("post-train w8a8", "post-train w8a8, first/last float"):
            rows[name] = score(models[name], args.scale)
            print(f"{name:<20} PSNR {rows[name]['psnr']:.3f} dB  SSIM {rows[name]['ssim']:.4f}", flush=True)

    dummy = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_files = {"FP32 (dense)": Path(tmp) / "fp32.onnx"}
        checks = {"FP32 (dense)": transform_to_onnx(reference, onnx_files["FP32 (dense)"], dummy, False)}
        for name in ("linear w8a8 QAT", "post-train w8a8", "post-train w8a8, first/last float"):
            if name in models:
                onnx_files[f"INT8 {name}"] = Path(tmp) / f"int8_{len(onnx_files)}.onnx"
                checks[f"INT8 {name}"] = transform_to_onnx(models[name], onnx_files[f"INT8 {name}"], dummy, True)
        onnx_rows = {}
        if not args.latency_only:
            for name, path in onnx_files.items():
                onnx_rows[name] = score(OrtModel(path, args.threads), args.scale)
        ms = latency(onnx_files, args)
        sizes = {name: path.stat().st_size for name, path in onnx_files.items()}

    print(f"\nC2SRCNN x{args.scale} on the embedded test photographs (astronaut, chelsea, coffee); Y channel, "
          f"border = scale.\n")
    if rows:
        print(f"{pretrain}, then "
              f"{args.finetune_iters} iters per variant (Adam lr {args.ft_lr} cosine); batch {args.batch}, "
              f"crop {args.crop}; {args.threads} threads\n")
        dense = rows["dense"]
        head = f"{'variant':<56}{'PSNR':>9}{'SSIM':>9}{'vs dense':>10}"
        print(head)
        print("-" * len(head))
        print(f"{'bicubic':<56}{dense['bicubic_psnr']:>9.3f}{dense['bicubic_ssim']:>9.4f}{'':>10}")
        for name, r in rows.items():
            print(f"{name + ' (PyTorch)':<56}{r['psnr']:>9.3f}{r['ssim']:>9.4f}{r['psnr'] - dense['psnr']:>+10.3f}")
        for name, r in onnx_rows.items():
            print(f"{name + ' (ONNX Runtime)':<56}{r['psnr']:>9.3f}{r['ssim']:>9.4f}"
                  f"{r['psnr'] - dense['psnr']:>+10.3f}")
    print(f"\nONNX Runtime {ort.__version__} CPU latency, input 1x1x{args.size}x{args.size}, {args.threads} "
          f"intra-op threads, median of {args.runs} interleaved runs:\n")
    head = f"{'model':<40}{'ms':>9}{'vs FP32':>9}{'KiB':>8}{'integer kernels':>18}{'check (share within)':>24}"
    print(head)
    print("-" * len(head))
    fp32 = ms["FP32 (dense)"]
    for name in onnx_files:
        ops = ", ".join(f"{k} x{v}" for k, v in checks[name]["integer_ops"].items()) or "-"
        print(f"{name:<40}{ms[name]:>9.1f}{fp32 / ms[name]:>8.2f}x{sizes[name] / 1024:>8.1f}{ops:>18}"
              f"{('ok' if checks[name]['passed'] else 'FAILED') + ' (' + format(checks[name]['within_tolerance'], '.4%') + ')':>24}")
    print(f"\ntotal {time.perf_counter() - start:.0f}s")
    print("\ntargets:")
    if rows:
        for name, tol in (("DoReFa w8a8", 0.05), ("linear w8a8 QAT", 0.05), ("post-train w8a8", 0.05),
                          ("DoReFa w4a8", 0.25), ("PACT w4a4", 0.25), ("linear w4a8 QAT", 0.25)):
            drop = rows["dense"]["psnr"] - rows[name]["psnr"]
            print(f"  {name} within {tol} dB of dense: {drop:+.3f} dB below -> {'met' if drop <= tol else 'NOT met'}")
    best = max((fp32 / v, k) for k, v in ms.items() if k.startswith("INT8"))
    print(f"  INT8 ONNX >= 1.5x faster than FP32 ONNX: best {best[0]:.2f}x ({best[1]}) -> "
          f"{'met' if best[0] >= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
