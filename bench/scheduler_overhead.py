"""Per-step overhead of an active AGP schedule (masks applied every minibatch), vs a plain loop.

    python bench/scheduler_overhead.py [--case conv] [--pairs 40] [--threads 1]
    python bench/scheduler_overhead.py --big-tensor 3     # one AGP step on AlexNet's 37.7M-element FC weight

One case per run (`--case`; CASES lists them): a network, its input batch and the weights AGP prunes,
trained with SGD + momentum on CPU. Four loops run side by side: a plain loop, a second identical
plain loop (the A/A noise floor: its ratio to the first should be 0%), the compress AGP schedule, and
torch.ao.pruning doing the same magnitude masking (parametrized weights). Both pruning loops recompute
their masks on the same cadence, at the start of every "epoch" of STEPS_PER_EPOCH steps, to the same
AGP level; that recompute is timed apart for both and amortized over the epoch.

Each round times one step of every loop, in an order rotated round by round, after a warm-up round;
the whole-step overhead is the median of the per-round ratios to the plain loop, with a bootstrap 95%
interval. A whole-step difference below about 1% is within the noise of a shared machine, so the
scheduler's own work inside each compress step (every hook call, masks applied) is also timed
directly and reported beside it. Everything is timed twice: wall time, and this process's CPU time
(steadier on a shared machine, where the process waits for a core).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from timing import Stopwatch, median_interval, rotation  # bench/ is on sys.path when run as a script
from torch import nn
from torch.ao.pruning import BaseSparsifier

import compress
from compress.pruning.levels import AGPLevel

STEPS_PER_EPOCH = 10
#: the AGP schedule both pruning loops follow: level from INITIAL to FINAL over epochs 0 .. ENDING - 1
INITIAL, FINAL, ENDING = 0.05, 0.8, 1000


@dataclass(frozen=True)
class Case:
    """What is trained: the network, its input batch, and the weights the schedule prunes."""

    description: str
    net: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    weights: Callable[[nn.Module], list[str]]


def conv_net() -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(1, 64, 3, padding=1), nn.ReLU()]
    for _ in range(6):
        layers += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
    layers.append(nn.Conv2d(64, 1, 3, padding=1))
    return nn.Sequential(*layers)


def conv_weights(model: nn.Module) -> list[str]:
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


CASES = {
    "conv": Case("8-layer 3x3 conv net (64 channels), batch 16, 1x64x64 inputs", conv_net, (16, 1, 64, 64),
                 conv_weights),
}


class MagnitudeSparsifier(BaseSparsifier):
    """torch.ao.pruning sparsifier doing the same element-wise magnitude masking."""

    def update_mask(self, module, tensor_name, sparsity_level, **kwargs):
        p = getattr(module.parametrizations, tensor_name)
        w = p.original.detach()
        flat = torch.ones(w.numel(), dtype=p[0].mask.dtype)
        flat[w.abs().flatten().argsort()[: int(sparsity_level * w.numel())]] = 0
        p[0].mask.data.copy_(flat.view_as(p[0].mask))


class Loop:
    """One training loop under test: a model and its optimizer on the shared batch."""

    name = "plain loop"

    def __init__(self, case: Case, x: torch.Tensor):
        self.model = case.net()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.x = x
        with torch.no_grad():
            self.y = torch.randn_like(self.model(x))

    def loss(self) -> torch.Tensor:
        return nn.functional.mse_loss(self.model(self.x), self.y)

    def step(self, epoch: int, i: int, own: Stopwatch) -> None:
        """One training step; `own` times the pruning library's own calls in it (none here)."""
        loss = self.loss()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def recompute(self, epoch: int) -> None:
        """The masks' recompute at the start of `epoch` (nothing for a plain loop)."""


class Control(Loop):
    name = "plain loop again"


class CompressAGP(Loop):
    """The compress schedule's hooks around each step; each hook call is timed."""

    name = "compress AGP schedule"

    def __init__(self, case: Case, x: torch.Tensor):
        super().__init__(case, x)
        self.sched = compress.dict_config(self.model, self.opt, {"pruners": {"agp": {
            "class": "AutomatedGradualPruner", "initial_sparsity": INITIAL, "final_sparsity": FINAL,
            "weights": case.weights(self.model)}}, "policies": [{"pruner": {"instance_name": "agp"},
                                                                  "starting_epoch": 0, "ending_epoch": ENDING}]})

    def step(self, epoch: int, i: int, own: Stopwatch) -> None:
        s, n, opt = self.sched, STEPS_PER_EPOCH, self.opt
        with own:
            s.on_minibatch_begin(epoch, i, n, opt)
        loss = self.loss()
        with own:
            loss = s.before_backward_pass(epoch, i, n, loss, opt)
        opt.zero_grad()
        loss.backward()
        with own:
            s.before_parameter_optimization(epoch, i, n, opt)
        opt.step()
        with own:
            s.on_minibatch_end(epoch, i, n, opt)

    def recompute(self, epoch: int) -> None:
        self.sched.on_epoch_begin(epoch, self.opt)


class TorchAO(Loop):
    """torch.ao.pruning: masks as weight parametrizations, recomputed by sparsifier.step() to the AGP level."""

    name = "torch.ao.pruning"

    def __init__(self, case: Case, x: torch.Tensor):
        super().__init__(case, x)
        self.sparsifier = MagnitudeSparsifier(defaults={"sparsity_level": INITIAL})
        self.sparsifier.prepare(self.model, config=[{"tensor_fqn": n} for n in case.weights(self.model)])

    def recompute(self, epoch: int) -> None:
        level = AGPLevel(INITIAL, FINAL).level(epoch / (ENDING - 1))
        for group in self.sparsifier.groups:
            group["sparsity_level"] = level
        self.sparsifier.step()


def percent(ratios: list[float]) -> str:
    lo, hi = median_interval(ratios)
    return f"{100 * (statistics.median(ratios) - 1):+6.2f}% [{100 * (lo - 1):+.2f}, {100 * (hi - 1):+.2f}]"


def report(loops: list[Loop], step: dict[str, list[Stopwatch]], own: dict[str, list[Stopwatch]],
           recompute: dict[str, list[Stopwatch]], clock: str) -> None:
    """The figures of one clock ('wall' or 'cpu')."""
    def times(watches: list[Stopwatch]) -> list[float]:
        return [getattr(w, clock) for w in watches]

    plain = times(step[loops[0].name])
    med_plain = statistics.median(plain)
    print(f"{'wall time' if clock == 'wall' else 'CPU time of this process'}:")
    print("  whole step (median; vs plain: median of per-round ratios [bootstrap 95% interval]):")
    for lp in loops:
        ratios = [a / b for a, b in zip(times(step[lp.name]), plain, strict=True)]
        extra = "" if lp is loops[0] else f"   vs plain {percent(ratios)}"
        print(f"    {lp.name:22s} {1e3 * statistics.median(times(step[lp.name])):8.2f} ms{extra}")
    ours = times(own[CompressAGP.name])
    q = statistics.quantiles(ours, n=4)
    print(f"  the scheduler's own work inside each compress step (hooks, masks applied), timed directly: median "
          f"{1e6 * statistics.median(ours):.1f} us (quartiles {1e6 * q[0]:.1f}-{1e6 * q[2]:.1f}) "
          f"= {100 * statistics.median(ours) / med_plain:.3f}% of a plain step")
    for name in (CompressAGP.name, TorchAO.name):
        r = statistics.median(times(recompute[name]))
        print(f"  mask recompute on a scheduled step, {name}: {1e3 * r:.2f} ms (median of {len(recompute[name])}) "
              f"= {100 * r / STEPS_PER_EPOCH / med_plain:.2f}% of a step amortized over {STEPS_PER_EPOCH} steps")
    total = statistics.median(ours) + statistics.median(times(recompute[CompressAGP.name])) / STEPS_PER_EPOCH
    print(f"  compress overhead timed directly (own work + amortized recompute): {100 * total / med_plain:.3f}% "
          f"of a plain step")


# ---- Variant --big-tensor: one mask recomputation on a large weight (AlexNet's 9216 x 4096 classifier.1) ----------

def big_tensor(repeats: int, rows: int = 4096, cols: int = 9216) -> None:
    """Time an AGP step (50% of a rows x cols Linear weight) through the scheduler, against Distiller's method
    (torch.topk of the k smallest |w|, then |w| > the k-th) and a stable argsort of |w| (this library's method
    before selection); one elementwise pass over the weight gives the machine's speed in the same run."""
    torch.manual_seed(0)
    layer = nn.Linear(cols, rows, bias=False)
    w = layer.weight.detach().clone()
    k = w.numel() // 2

    def scheduler_step() -> None:
        model = nn.Sequential(layer)
        sched = compress.dict_config(model, None, {"pruners": {"agp": {
            "class": "AutomatedGradualPruner", "initial_sparsity": 0.5, "final_sparsity": 0.6, "weights": "0.weight"}},
            "policies": [{"pruner": {"instance_name": "agp"}, "starting_epoch": 0, "ending_epoch": 2}]})
        with torch.no_grad():
            layer.weight.copy_(w)
        t0 = time.perf_counter()
        sched.on_epoch_begin(0)
        times["compress AGP step (scheduler)"].append(time.perf_counter() - t0)

    def distiller_topk() -> None:
        t0 = time.perf_counter()
        a = w.abs().view(-1)
        threshold = torch.topk(a, k, largest=False, sorted=True).values[-1]
        _ = (a > threshold).to(w.dtype)
        times["Distiller: topk, then threshold"].append(time.perf_counter() - t0)

    def stable_argsort() -> None:
        t0 = time.perf_counter()
        out = torch.ones(w.numel(), dtype=w.dtype)
        out[torch.argsort(w.abs().view(-1).double(), stable=True)[:k]] = 0
        times["stable argsort (before)"].append(time.perf_counter() - t0)

    def one_pass() -> None:
        t0 = time.perf_counter()
        w.abs()
        times["one pass over the weight (|w|)"].append(time.perf_counter() - t0)

    variants = [scheduler_step, distiller_topk, stable_argsort, one_pass]
    times: dict[str, list[float]] = {"compress AGP step (scheduler)": [], "Distiller: topk, then threshold": [],
                                     "stable argsort (before)": [], "one pass over the weight (|w|)": []}
    for r in range(repeats):  # rotated order
        for fn in variants[r % 4:] + variants[:r % 4]:
            fn()
    print(f"threads={torch.get_num_threads()} repeats={repeats} weight {rows}x{cols} ({w.numel() / 1e6:.1f}M), "
          "50% element-wise")
    for name, values in times.items():
        print(f"{name:34s} median {statistics.median(values):7.3f} s   (min {min(values):.3f} s)")

# ---- end of the --big-tensor variant --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="conv", help="the network and batch to time")
    parser.add_argument("--pairs", type=int, default=40, help="timed rounds (one step of every loop per round)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--big-tensor", type=int, metavar="REPEATS", default=0,
                        help="instead: time REPEATS mask recomputations of a 37.7M-element weight")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.big_tensor:
        big_tensor(args.big_tensor)
        return
    torch.manual_seed(0)
    case = CASES[args.case]
    x = torch.randn(*case.input_shape)
    loops = [Loop(case, x), Control(case, x), CompressAGP(case, x), TorchAO(case, x)]

    step: dict[str, list[Stopwatch]] = {lp.name: [] for lp in loops}
    own: dict[str, list[Stopwatch]] = {lp.name: [] for lp in loops}
    recompute: dict[str, list[Stopwatch]] = {lp.name: [] for lp in loops}
    for lp in loops:  # warm-up round (epoch 0): not timed
        lp.recompute(0)
        lp.step(0, 0, Stopwatch())
    for k in range(args.pairs):
        epoch, i = divmod(k + STEPS_PER_EPOCH, STEPS_PER_EPOCH)
        order = rotation(loops, k)
        if i == 0:  # a scheduled step: both pruning loops recompute their masks, timed apart
            for lp in order:
                with Stopwatch() as watch:
                    lp.recompute(epoch)
                recompute[lp.name].append(watch)
        for lp in order:
            own[lp.name].append(Stopwatch())
            with Stopwatch() as watch:
                lp.step(epoch, i, own[lp.name][-1])
            step[lp.name].append(watch)

    print(f"{case.description}; threads={args.threads} rounds={args.pairs} (+1 warm-up), order rotated per round; "
          f"masks recomputed every {STEPS_PER_EPOCH} steps by both pruning loops")
    for clock in ("wall", "cpu"):
        report(loops, step, own, recompute, clock)


if __name__ == "__main__":
    main()
