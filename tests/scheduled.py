"""The plain training loop the tests drive a CompressionScheduler with (every hook, in the order of docs/architecture.md)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


def run_scheduled(model: nn.Module, opt: torch.optim.Optimizer, sched, epochs: int | Iterable[int],
                  batches: Sequence[Batch] | Callable[[int, int], Batch], *, minibatches: int | None = None,
                  loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss,
                  record: Callable[[int, int], object] | None = None) -> None:
    """Train on `batches` (a list, reused every epoch, or batch(epoch, i)) with the scheduler's hooks;
    `record(epoch, i)` is called after on_minibatch_begin, before the step."""
    n = minibatches if minibatches is not None else len(batches)  # type: ignore[arg-type]
    for epoch in range(epochs) if isinstance(epochs, int) else epochs:
        sched.on_epoch_begin(epoch, opt)
        for i in range(n):
            x, y = batches(epoch, i) if callable(batches) else batches[i]
            sched.on_minibatch_begin(epoch, i, n, opt)
            if record is not None:
                record(epoch, i)
            step_loss = sched.before_backward_pass(epoch, i, n, loss(model(x), y), opt)
            opt.zero_grad()
            step_loss.backward()
            sched.before_parameter_optimization(epoch, i, n, opt)
            opt.step()
            sched.on_minibatch_end(epoch, i, n, opt)
        sched.on_epoch_end(epoch, opt)
