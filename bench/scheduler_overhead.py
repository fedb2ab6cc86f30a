"""Per-step overhead of an active AGP schedule (masks applied every minibatch), vs a plain loop.

    python bench/scheduler_overhead.py [--pairs 30] [--threads 1]

An 8-layer 3x3 conv net (64 channels), batch 16, 1x64x64 inputs, SGD with momentum, on CPU. Each
pair times one plain training step and one step with the scheduler's hooks around it, in
alternating order; the overhead is the median of the per-pair ratios. Masks are recomputed only on
scheduled steps (here: every 10 steps, an AGP "epoch"); that cost is reported apart and amortized.
torch.ao.pruning doing the same magnitude masking (parametrized weights) is measured the same way.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=30, help="timed step pairs per comparison")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 64, 64), torch.randn(16, 1, 64, 64)
    loss_fn = nn.MSELoss()

    def make():
        model = net()
        return model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    plain, plain_opt = make()
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

    for fn in (plain_step, ours_step, ao_step, plain_step, ours_step, ao_step):  # warm-up
        fn()
    ratios_ours, ratios_ao, t_plain, t_ours, t_ao = [], [], [], [], []
    for k in range(args.pairs):
        order = [plain_step, ours_step, ao_step] if k % 2 == 0 else [ao_step, ours_step, plain_step]
        times = {fn.__name__: timed(fn) for fn in order}
        t_plain.append(times["plain_step"])
        t_ours.append(times["ours_step"])
        t_ao.append(times["ao_step"])
        ratios_ours.append(times["ours_step"] / times["plain_step"])
        ratios_ao.append(times["ao_step"] / times["plain_step"])

    recompute = []
    for e in range(5):
        t0 = time.perf_counter()
        sched.on_epoch_begin(e, ours_opt)
        recompute.append(time.perf_counter() - t0)
    med_plain = statistics.median(t_plain)
    amortized = statistics.median(recompute) / STEPS_PER_EPOCH / med_plain
    print(f"threads={args.threads} pairs={args.pairs} batch=16 input=1x64x64 8 conv layers x 64 ch")
    print(f"plain loop            median step {1e3 * med_plain:8.2f} ms")
    print(f"compress AGP schedule median step {1e3 * statistics.median(t_ours):8.2f} ms   "
          f"overhead (median of paired ratios) {100 * (statistics.median(ratios_ours) - 1):+.2f}%")
    print(f"torch.ao.pruning      median step {1e3 * statistics.median(t_ao):8.2f} ms   "
          f"overhead (median of paired ratios) {100 * (statistics.median(ratios_ao) - 1):+.2f}%")
    print(f"mask recompute on a scheduled step: {1e3 * statistics.median(recompute):.2f} ms "
          f"(= {100 * amortized:.2f}% of a step when amortized over {STEPS_PER_EPOCH} steps per epoch)")


if __name__ == "__main__":
    main()
