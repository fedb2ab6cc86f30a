"""Throughput of DDP training (with an AGP schedule active) and of the sensitivity analysis, 1 vs N processes.

    python bench/ddp_scaling.py                         # EDSR and the Deblur generator, 1 and 2 processes, CPU
    python bench/ddp_scaling.py --case edsr --steps 40 --procs 1 2 --sensitivity

Each process runs one thread (torch.set_num_threads(1)), joins a gloo group (nccl with --device cuda) and
trains its own batch of --batch random crops (weak scaling: the global batch is --batch x processes, as
under torchrun). After --warmup steps, --steps steps are timed on rank 0 between two barriers; the
throughput is processes x batch x steps / seconds (images/s). The AGP schedule prunes every conv weight and
re-applies the masks after every step, as in the apps. --sensitivity also times the element-wise
sensitivity analysis of the case's model (its 10 default levels on 4 images; the (weight, level) pairs shared
out across the ranks; apputils.sensitivity).
Each process count runs --repeats times, interleaved (1, 2, 1, 2, ...); the figures are medians.
Run it on an otherwise idle machine: other processes on the same cores change every figure.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compress  # noqa: E402
from apps.deblur.models import PRESETS, build_generator  # noqa: E402
from apps.sr.models import build_model  # noqa: E402
from apputils.sensitivity import Evaluation, sensitivity_analysis  # noqa: E402

CASES = ("edsr", "deblur")


def make_case(case: str, crop: int) -> tuple[nn.Module, tuple[int, ...], tuple[int, ...]]:
    """(model, input shape, target shape) of one sample of `case`."""
    if case == "edsr":
        return build_model("EDSR", {"num_channels": 1, "upscale_factor": 2}), (1, crop // 2, crop // 2), (1, crop, crop)
    return build_generator("ResnetGenerator", {**PRESETS["DeblurGAN-CPU"], "norm": "instance"}), (3, crop, crop), \
        (3, crop, crop)


def agp(model: nn.Module) -> dict:
    """AGP from 10% to 70% over 100 epochs on every conv weight (masks re-applied each step)."""
    weights = [n for n, p in model.named_parameters() if p.dim() == 4]
    return {"pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.7,
                              "weights": weights}},
            "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 100, "frequency": 1}]}


def worker(rank: int, world: int, port: int, args: argparse.Namespace, results: mp.Queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model, in_shape, out_shape = make_case(args.case, args.crop)
        model = model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        sched = compress.dict_config(model, optimizer, agp(model))
        ddp = DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
        g = torch.Generator().manual_seed(rank)
        x = torch.rand(args.batch, *in_shape, generator=g).to(device)
        y = torch.rand(args.batch, *out_shape, generator=g).to(device)
        n = args.warmup + args.steps
        sched.on_epoch_begin(0, optimizer)
        t0 = 0.0
        for i in range(n):
            if i == args.warmup:
                dist.barrier()
                t0 = time.perf_counter()
            sched.on_minibatch_begin(0, i, n, optimizer)
            loss = nn.functional.l1_loss(ddp(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sched.on_minibatch_end(0, i, n, optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()
        train_s = time.perf_counter() - t0
        sense_s = None
        if args.sensitivity:
            batches = [(torch.rand(1, *in_shape, generator=g).to(device), torch.rand(1, *out_shape, generator=g)
                        .to(device)) for _ in range(4)]
            evaluation = Evaluation(batches, lambda out, target: {"l1": float((out - target).abs().mean())})
            dist.barrier()
            t1 = time.perf_counter()
            sensitivity_analysis(model, None, evaluation, "element", progress=False)
            dist.barrier()
            sense_s = time.perf_counter() - t1
        if rank == 0:
            results.put((train_s, sense_s))
    finally:
        dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> tuple[float, float | None]:
    """(seconds of the timed training steps, seconds of the sensitivity analysis or None) with `world` processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, port, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    out = results.get()
    for p in procs:
        p.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=[*CASES, "all"], default="all")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch", type=int, default=4, help="per-process batch")
    p.add_argument("--crop", type=int, default=48, help="HR / sharp crop side in pixels")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sensitivity", action="store_true", help="also time the sensitivity analysis")
    p.add_argument("--repeats", type=int, default=3, help="runs of each process count, interleaved; medians")
    args = p.parse_args()
    cases = CASES if args.case == "all" else (args.case,)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {args.device}, one thread per process, "
          f"per-process batch {args.batch}, crop {args.crop}, {args.steps} timed steps after {args.warmup}, "
          f"medians of {args.repeats} interleaved runs")
    print(f"{'case':<8}{'procs':>6}{'images/s':>11}{'speed-up':>10}{'sensitivity s':>15}{'speed-up':>10}")
    for case in cases:
        case_args = argparse.Namespace(**{**vars(args), "case": case})
        runs: dict[int, list[tuple[float, float | None]]] = {w: [] for w in args.procs}
        for _ in range(args.repeats):  # interleaved: 1, 2, 1, 2, ... processes, so drift hits every count alike
            for world in args.procs:
                runs[world].append(measure(world, case_args))
        base: tuple[float, float | None] | None = None
        for world in args.procs:
            train_s = statistics.median(t for t, _ in runs[world])
            senses = [s for _, s in runs[world] if s is not None]
            sense_s = statistics.median(senses) if senses else None
            ips = world * args.batch * args.steps / train_s
            base = base or (ips, sense_s)
            sense = f"{sense_s:>15.2f}{base[1] / sense_s:>9.2f}x" if sense_s is not None else ""
            print(f"{case:<8}{world:>6}{ips:>11.2f}{ips / base[0]:>9.2f}x{sense}", flush=True)


if __name__ == "__main__":
    main()
