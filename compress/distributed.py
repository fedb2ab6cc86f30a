"""Reductions across the processes of a torch.distributed job (torchrun + DDP).

DistributedDataParallel keeps the weights equal on every rank, so what compression derives from weights
(masks, levels, thinning recipes, regularizer terms) is equal too. What it derives from the local batch
(activation ranges, calibration statistics, activation-ranked pruning) would drift apart: those values
pass through these reductions, which make them what one process would have computed on the union of the
ranks' batches. Without an initialized process group (or with one process) they change nothing.

Each reduction is a collective: every rank must reach it the same number of times (DDP's lockstep
training does; a forward pass in training mode on one rank only would wait for the others).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether a process group of more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over the ranks, in place; returns it."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def global_min_max(mn: torch.Tensor, mx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min over the ranks of `mn`, max over the ranks of `mx`), in one collective."""
    if not active():
        return mn, mx
    both = torch.stack([mn.detach().reshape(()), -mx.detach().reshape(())])
    dist.all_reduce(both, op=dist.ReduceOp.MIN)
    return both[0], -both[1]


def average_gradient(p: torch.Tensor) -> None:
    """A post-accumulate-grad hook for a trained parameter outside DDP's wrapper (a distillation connector):
    its gradient becomes the mean over the ranks, as DDP makes the model's."""
    if active() and p.grad is not None:
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(dist.get_world_size())


__all__ = ["active", "all_reduce_sum_", "average_gradient", "global_min_max"]
