"""The scheduled training loop the quality benchmarks share (fixed iteration budgets, not wall-clock)."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

import compress
from apps.sr.data import get_training_set
from apps.sr.evaluation import model_input
from apps.sr.solver import TASK_LOSSES


def cosine_loop(opt: torch.optim.Optimizer, sched: compress.CompressionScheduler | None, data: Any,
                loader: Iterable[Any], epochs: int, per: int, loss_of: Callable[[Any], torch.Tensor],
                others: tuple[torch.optim.Optimizer, ...] = (), warmup: int = 0) -> None:
    """`epochs` x `per` steps of `opt` on loss_of(batch) with the schedule's hooks; the LR of every group (and
    of the `others` optimizers) follows a cosine from its starting value to 1% of it, scaled up linearly over
    the first `warmup` steps."""
    base_lrs = [[g["lr"] for g in o.param_groups] for o in (opt, *others)]  # after the schedule (PACT groups)
    total, step = per * epochs, 0
    for epoch in range(epochs):
        data.set_epoch(epoch)
        if sched:
            sched.on_epoch_begin(epoch, opt)
        for i, b in enumerate(loader):
            cosine = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / total))
            factor = cosine * min(1.0, (step + 1) / max(warmup, 1))
            for o, bases in zip((opt, *others), base_lrs, strict=True):
                for group, base in zip(o.param_groups, bases, strict=True):
                    group["lr"] = base * factor
            if sched:
                sched.on_minibatch_begin(epoch, i, per, opt)
            loss = loss_of(b)
            if sched:
                loss = sched.before_backward_pass(epoch, i, per, loss, opt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sched:
                sched.before_parameter_optimization(epoch, i, per, opt)
            opt.step()
            if sched:
                sched.on_minibatch_end(epoch, i, per, opt)
            step += 1
        if sched:
            sched.on_epoch_end(epoch, opt)


def train_sr(model: nn.Module, schedule: dict[str, Any] | None, iters: int, lr: float, *, scale: int, crop: int,
             batch: int, seed: int, epochs: int, dummy_input: torch.Tensor | None = None,
             teachers: dict[str, nn.Module] | None = None,
             loss: str = "mse") -> tuple[nn.Module, compress.CompressionScheduler | None]:
    """`iters` Adam steps of the `loss` task loss on the embedded photographs, cosine LR from each group's
    `lr` to 1% of it, split into `epochs` scheduler epochs, with the schedule's hooks (none when `schedule`
    is None); `teachers` are the distillation teachers the schedule may name."""
    per = max(iters // epochs, 1)
    data = get_training_set(scale, None, crop_size=crop, length=per * batch, seed=seed)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, drop_last=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = compress.dict_config(model, opt, schedule, dummy_input=dummy_input, teachers=teachers) if schedule else None
    model.train()
    criterion = TASK_LOSSES[loss]()
    cosine_loop(opt, sched, data, loader, epochs, per,
                lambda b: criterion(model(model_input(model, b, "cpu")), b["hr"]))
    return model.eval(), sched
