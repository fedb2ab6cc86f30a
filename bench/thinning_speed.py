"""Dense vs 50%-filter-pruned-and-thinned: parameters, MACs and CPU latency (torch and ONNX Runtime).

    python bench/thinning_speed.py [--runs 60] [--threads 1] [--size 128] [--round_to 8]

Networks: C2SRCNN (the SR app's model, on a 1 x size x size bicubic image) and EDSR
(apps.sr.models.EDSR: 8 residual blocks of 64 channels, PixelShuffle x2, on a 1 x size/2 x size/2 input).
Every conv whose filters can be removed is pruned to half of its coupled group by L1 norm (each
group once; the residual stream is one group), the masks are applied, and the model is thinned; the
masked and thinned outputs are compared. Two thin variants: exactly half (thin/1), and half with the
kept channels rounded up to a multiple of --round_to (the pruners' `round_to:`; 56 -> 32, 12 -> 8). Latency: batch 1, torch.inference_mode, `--threads` intra-op
threads for torch and ORT, warm-up runs first, then `--runs` rounds in which dense and thin run
in turn (order reversed every round); medians are printed with their ratio next to the MACs ratio.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.sr.models import C2SRCNN, EDSR  # noqa: E402
from compress.pruning.criteria import count_to_prune, lowest  # noqa: E402
from compress.pruning.groups import group_importance, group_mask  # noqa: E402
from compress.thinning import TracedGroups, count_macs, count_params, thin  # noqa: E402


def prune_half_and_thin(model: nn.Module, x: torch.Tensor, round_to: int) -> tuple[float, int]:
    """L1-prune half of every removable filter group (each once; the kept count rounded up to a multiple
    of `round_to`, as the structured pruners' `round_to:` does), then thin. Returns (max |diff|, groups)."""
    resolver = TracedGroups(model, x)
    params = dict(model.named_parameters())
    shapes = {n: p.shape for n, p in params.items()}
    masks: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name, p in params.items():
        if p.dim() != 4:
            continue
        try:
            group = resolver.group(name, "filters")
        except ValueError:
            continue  # e.g. the output conv
        key = tuple(sorted((m.param, m.dim, m.index_map) for m in group.members))
        if key in seen:
            continue
        seen.add(key)
        keep = ~lowest(group_importance(group, params, 1), count_to_prune(0.5, group.size, round_to))
        for n, m in group_mask(group, keep, shapes).items():
            masks[n] = masks[n] * m if n in masks else m
    with torch.no_grad():
        for n, p in params.items():
            if n in masks:
                p.mul_(masks[n])
        masked = model(x)
        thin(model, x, masks, "filters")
        diff = (model(x) - masked).abs().max().item()
    return diff, len(seen)


def interleaved(runners: list[Callable[[], object]], runs: int, warmup: int = 5) -> list[float]:
    """Median seconds per call of each runner, runs alternating (order reversed every other round)."""
    for _ in range(warmup):
        for run in runners:
            run()
    times: list[list[float]] = [[] for _ in runners]
    for r in range(runs):
        order = list(range(len(runners)))[:: 1 if r % 2 == 0 else -1]
        for i in order:
            t0 = time.perf_counter()
            runners[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def ort_session(model: nn.Module, x: torch.Tensor, folder: Path, name: str, threads: int) -> ort.InferenceSession:
    path = folder / f"{name}.onnx"
    with warnings.catch_warnings():  # the legacy exporter warns that it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"], do_constant_folding=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench(label: str, dense: nn.Module, x: torch.Tensor, runs: int, threads: int, folder: Path,
          round_to: int) -> None:
    dense.eval()
    variants = {"dense": dense}
    diffs, groups = [], 0
    for r in (1, round_to):
        variants[f"thin/{r}"] = thin_model = copy.deepcopy(dense)
        diff, groups = prune_half_and_thin(thin_model, x, r)
        diffs.append(diff)
    models = list(variants.values())
    p = [count_params(mod) for mod in models]
    m = [count_macs(mod, x) for mod in models]
    with torch.inference_mode():
        t_torch = interleaved([lambda mod=mod: mod(x) for mod in models], runs)
    sessions = [ort_session(mod, x, folder, f"{label}_{i}", threads) for i, mod in enumerate(models)]
    feed = {"input": x.numpy()}
    t_ort = interleaved([lambda s=s: s.run(None, feed) for s in sessions], runs)
    print(f"\n{label}: input {tuple(x.shape)}, {groups} filter groups halved (thin/1: exactly; thin/{round_to}: "
          f"kept channels rounded up to a multiple of {round_to}), max |masked - thinned| = {max(diffs):.2e}")
    print(f"{'':8}{'params':>10}{'MMACs':>10}{'torch ms':>10}{'ORT ms':>10}"
          f"{'params':>9}{'MACs':>7}{'torch':>7}{'ORT':>7}   latency / MACs reduction (target >= 0.8)")
    for i, name in enumerate(variants):
        line = f"{name:8}{p[i]:>10d}{m[i] / 1e6:>10.1f}{t_torch[i] * 1e3:>10.2f}{t_ort[i] * 1e3:>10.2f}"
        if i:
            mr, tr, orr = m[i] / m[0], t_torch[i] / t_torch[0], t_ort[i] / t_ort[0]
            line += (f"{p[i] / p[0]:>9.3f}{mr:>7.3f}{tr:>7.3f}{orr:>7.3f}   "
                     f"torch {(1 - tr) / (1 - mr):.2f}, ORT {(1 - orr) / (1 - mr):.2f}")
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60, help="timed rounds per variant (default 60)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ORT (default 1)")
    ap.add_argument("--size", type=int, default=128, help="HR image side in pixels (default 128)")
    ap.add_argument("--round_to", type=int, default=8,
                    help="the second thin variant keeps a multiple of this many channels per group (default 8)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {args.threads}, runs {args.runs}")
    with tempfile.TemporaryDirectory() as tmp:
        bench("C2SRCNN", C2SRCNN(), torch.rand(1, 1, args.size, args.size), args.runs, args.threads, Path(tmp),
              args.round_to)
        bench("EDSR", EDSR(), torch.rand(1, 1, args.size // 2, args.size // 2), args.runs, args.threads, Path(tmp),
              args.round_to)


if __name__ == "__main__":
    main()
