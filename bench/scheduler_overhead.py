"""Per-step overhead of an active AGP schedule (masks applied every minibatch), vs a plain loop.

    python bench/scheduler_overhead.py [--pairs 30] [--threads 1]
    python bench/scheduler_overhead.py --big-tensor 3     # one AGP step on AlexNet's 37.7M-element FC weight

An 8-layer 3x3 conv net (64 channels), batch 16, 1x64x64 inputs, SGD with momentum, on CPU. Each
pair times one plain training step and one step with the scheduler's hooks around it, in
alternating order; the overhead is the median of the per-pair ratios. Masks are recomputed only on
scheduled steps (here: every 10 steps, an AGP "epoch"); that cost is reported apart and amortized.
torch.ao.pruning doing the same magnitude masking (parametrized weights) is measured the same way,
and a second identical plain loop gives the noise floor of the measurement (its ratio should be 0%).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.ao.pruning import BaseSparsifier

import compress

STEPS_PER_EPOCH = 10


def net() -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(1, 64, 3, padding=1), nn.ReLU()]
    for _ in range(6):
        layers += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
    layers.append(nn.Conv2d(64, 1, 3, padding=1))
    return nn.Sequential(*layers)


def conv_weights(model: nn.Module) -> list[str]:
    return [f"{i}.weight" for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]


class MagnitudeSparsifier(BaseSparsifier):
    """torch.ao.pruning sparsifier doing the same element-wise magnitude masking."""

    def update_mask(self, module, tensor_name, sparsity_level, **kwargs):
        p = getattr(module.parametrizations, tensor_name)
        w = p.original.detach()
        flat = torch.ones(w.numel(), dtype=p[0].mask.dtype)
        flat[w.abs().flatten().argsort()[: int(sparsity_level * w.numel())]] = 0
        p[0].mask.data.copy_(flat.view_as(p[0].mask))


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
    parser.add_argument("--pairs", type=int, default=30, help="timed step pairs per comparison")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--big-tensor", type=int, metavar="REPEATS", default=0,
                        help="instead: time REPEATS mask recomputations of a 37.7M-element weight")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.big_tensor:
        big_tensor(args.big_tensor)
        return
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 64, 64), torch.randn(16, 1, 64, 64)
    loss_fn = nn.MSELoss()

    def make():
        model = net()
        return model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    plain, plain_opt = make()
    control, control_opt = make()
    ours, ours_opt = make()
    sched = compress.dict_config(ours, ours_opt, {"pruners": {"agp": {
        "class": "AutomatedGradualPruner", "initial_sparsity": 0.05, "final_sparsity": 0.8,
        "weights": conv_weights(ours)}}, "policies": [{"pruner": {"instance_name": "agp"},
                                                       "starting_epoch": 0, "ending_epoch": 1000}]})
    ao, ao_opt = make()
    sparsifier = MagnitudeSparsifier(defaults={"sparsity_level": 0.5})
    sparsifier.prepare(ao, config=[{"tensor_fqn": n} for n in conv_weights(ao)])
    sparsifier.step()

    def plain_step():
        loss = loss_fn(plain(x), y)
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()

    def control_step():
        loss = loss_fn(control(x), y)
        control_opt.zero_grad()
        loss.backward()
        control_opt.step()

    state = {"step": 0}

    def ours_step():
        epoch, i = divmod(state["step"], STEPS_PER_EPOCH)
        state["step"] += 1
        if i == 0:
            sched.on_epoch_begin(epoch, ours_opt)  # scheduled step: masks recomputed (timed separately)
        t0 = time.perf_counter()
        sched.on_minibatch_begin(epoch, i, STEPS_PER_EPOCH, ours_opt)
        loss = sched.before_backward_pass(epoch, i, STEPS_PER_EPOCH, loss_fn(ours(x), y), ours_opt)
        ours_opt.zero_grad()
        loss.backward()
        sched.before_parameter_optimization(epoch, i, STEPS_PER_EPOCH, ours_opt)
        ours_opt.step()
        sched.on_minibatch_end(epoch, i, STEPS_PER_EPOCH, ours_opt)
        return time.perf_counter() - t0

    def ao_step():
        loss = loss_fn(ao(x), y)
        ao_opt.zero_grad()
        loss.backward()
        ao_opt.step()

    def timed(fn):
        t0 = time.perf_counter()
        inner = fn()
        return inner if inner is not None else time.perf_counter() - t0

    variants = [plain_step, control_step, ours_step, ao_step]
    for fn in variants * 2:  # warm-up
        fn()
    times: dict[str, list[float]] = {fn.__name__: [] for fn in variants}
    for k in range(args.pairs):  # rotate the order so no variant always runs first or last
        for fn in variants[k % 4:] + variants[:k % 4]:
            times[fn.__name__].append(timed(fn))

    def overhead(name: str) -> float:
        return 100 * (statistics.median(a / b for a, b in zip(times[name], times["plain_step"], strict=True)) - 1)

    recompute = []
    for e in range(5):
        t0 = time.perf_counter()
        sched.on_epoch_begin(e, ours_opt)
        recompute.append(time.perf_counter() - t0)
    hook_loss = torch.zeros(())
    hook_times = []
    for _ in range(5):  # the hooks alone, as one step calls them (masks applied), without the training work
        t0 = time.perf_counter()
        for i in range(1, 201):
            sched.on_minibatch_begin(4, i % STEPS_PER_EPOCH, STEPS_PER_EPOCH, ours_opt)
            sched.before_backward_pass(4, i % STEPS_PER_EPOCH, STEPS_PER_EPOCH, hook_loss, ours_opt)
            sched.before_parameter_optimization(4, i % STEPS_PER_EPOCH, STEPS_PER_EPOCH, ours_opt)
            sched.on_minibatch_end(4, i % STEPS_PER_EPOCH, STEPS_PER_EPOCH, ours_opt)
        hook_times.append((time.perf_counter() - t0) / 200)
    med_plain = statistics.median(times["plain_step"])
    amortized = statistics.median(recompute) / STEPS_PER_EPOCH / med_plain
    print(f"threads={args.threads} rounds={args.pairs} batch=16 input=1x64x64 8 conv layers x 64 ch")
    for label, name in (("plain loop", "plain_step"), ("plain loop again", "control_step"),
                        ("compress AGP schedule", "ours_step"), ("torch.ao.pruning", "ao_step")):
        extra = "" if name == "plain_step" else f"   vs plain (median of paired ratios) {overhead(name):+6.2f}%"
        print(f"{label:22s} median step {1e3 * statistics.median(times[name]):8.2f} ms{extra}")
    print(f"hooks alone per step (masks applied): {1e6 * statistics.median(hook_times):.1f} us "
          f"= {100 * statistics.median(hook_times) / med_plain:.3f}% of a plain step")
    print(f"mask recompute on a scheduled step: {1e3 * statistics.median(recompute):.2f} ms "
          f"(= {100 * amortized:.2f}% of a step when amortized over {STEPS_PER_EPOCH} steps per epoch)")


if __name__ == "__main__":
    main()
