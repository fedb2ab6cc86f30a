"""How one pruning policy uses its pruner's masks: Distiller's policy arguments beyond timing.

By default a pruner's masks go into the MaskStore and stay: re-applied after every optimizer step, so
pruned weights never revive. A policy may also ask

- `fold_batchnorm: true`: rank conv filters by their weights with the following BatchNorm folded in
  (w * gamma / sqrt(running_var + eps)), the scale they have at inference; the masks apply to the weights;
- transient masks, for DropFilter-style training: `discard_masks_at_minibatch_end: true` drops the masks
  after each minibatch; `mask_on_forward_only: true` with `use_double_copies: true` masks the weights for
  the forward pass and restores them before the optimizer step (until the policy's last epoch, when
  `keep_mask: true` makes the masks permanent). Transient masks are applied at the start of each
  minibatch, the gradients are masked with them (`mask_gradients: true`), and with `use_double_copies`
  the unmasked weights are restored in `before_parameter_optimization` (which the loop must then call).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..masks import canonical
from ..policy import Context, PolicyWrapper, Step, Timing
from .pruner import Pruner

#: The pruner policy arguments this module acts on.
MASKING_ARGS = ("fold_batchnorm", "keep_mask", "mask_on_forward_only", "use_double_copies",
                "discard_masks_at_minibatch_end")


@dataclass(frozen=True)
class MaskingArgs:
    """A pruner policy's arguments about its masks (see the module docstring)."""

    fold_batchnorm: bool = False
    keep_mask: bool = False
    mask_on_forward_only: bool = False
    use_double_copies: bool = False
    discard_masks_at_minibatch_end: bool = False
    mask_gradients: bool = False

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> MaskingArgs:
        """The masking arguments of a policy's `args`."""
        return cls(**{k: bool(v) for k, v in args.items() if k in (*MASKING_ARGS, "mask_gradients")})

    @property
    def transient(self) -> bool:
        """Whether masks live outside the MaskStore (applied around each minibatch only)."""
        return self.discard_masks_at_minibatch_end or (self.mask_on_forward_only and self.use_double_copies)


def folded_weights(model: nn.Module, params: Mapping[str, torch.Tensor], pairs: Mapping[str, str]) -> dict[str, Any]:
    """`params` with each conv weight in `pairs` (conv -> its BatchNorm) scaled by gamma / sqrt(var + eps)."""
    modules = {canonical(n): m for n, m in model.named_modules()}
    out: dict[str, Any] = dict(params)
    for conv, bn_name in pairs.items():
        bn, name = modules[bn_name], f"{conv}.weight"
        if name in out and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None:
            gamma = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
            out[name] = out[name].detach() * (gamma / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)
    return out


class PruningPolicy(PolicyWrapper):
    """A pruner under one policy's masking arguments (BatchNorm-folded ranking, transient masks)."""

    def __init__(self, pruner: Pruner, args: MaskingArgs):
        super().__init__(pruner)
        self.pruner, self.args = pruner, args
        self.transient = args.transient
        self.held: dict[str, torch.Tensor] = {}
        self.saved: dict[str, torch.Tensor] = {}
        self._pairs: dict[str, str] | None = None

    def claims(self, ctx: Context) -> dict[tuple[str, int | None], str]:
        """The pruner's claims; checks that BatchNorm folding can find the model's conv -> BatchNorm pairs."""
        if self.args.fold_batchnorm and self._pairs is None and ctx.dummy_input is not None:
            # without a trace input yet, the schedule traces on the first forward and checks again then
            from ..thinning.graph import batchnorm_after

            self._pairs = batchnorm_after(ctx.model, ctx.dummy_input)
        if not self.transient and any(getattr(t.criterion, "transient_only", False) for t in self.pruner.targets):
            raise ValueError("its masks are meant to last one minibatch (DropFilter): give its policy "
                             "args: {discard_masks_at_minibatch_end: true}, as Distiller's drop_filter examples do")
        return self.pruner.claims(ctx)

    def _weights(self, ctx: Context) -> Mapping[str, torch.Tensor]:
        if not self.args.fold_batchnorm:
            return ctx.masks.params
        return folded_weights(ctx.model, ctx.masks.params, self._pairs or {})

    def _prune(self, ctx: Context, fraction: float) -> None:
        weights = self._weights(ctx)
        if not self.transient:
            self.pruner.prune(ctx, fraction, weights)
            return
        self.held = {}
        for target in self.pruner.expanded_targets(ctx):
            self.held.update(self.pruner.target_masks(ctx, target, fraction, weights))

    def on_epoch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        fraction = timing.pruning_fraction(step)
        if fraction is not None:
            self._prune(ctx, fraction)

    def on_minibatch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        self.on_epoch_begin(ctx, step, timing)
        if self.held:
            with torch.no_grad():
                for name, mask in self.held.items():
                    param = ctx.masks.params[name]
                    if self.args.use_double_copies:
                        self.saved[name] = param.detach().clone()
                    param.mul_(mask)

    def before_parameter_optimization(self, ctx: Context, step: Step, timing: Timing) -> None:
        with torch.no_grad():
            for name, mask in self.held.items():
                grad = ctx.masks.params[name].grad
                if self.args.mask_gradients and grad is not None:
                    grad.mul_(mask)
            for name, weight in self.saved.items():
                ctx.masks.params[name].copy_(weight)
        self.saved.clear()

    def on_minibatch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        if self.saved:
            raise ValueError(f"pruner '{self.pruner.name}' uses use_double_copies: call "
                             "scheduler.before_parameter_optimization(...) after backward and before "
                             "optimizer.step(), so the unmasked weights are restored before the update")
        if self.held and not self.args.mask_on_forward_only:
            with torch.no_grad():
                for name, mask in self.held.items():
                    ctx.masks.params[name].mul_(mask)
        if self.args.discard_masks_at_minibatch_end:
            self.held = {}

    def on_epoch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        if step.epoch == timing.epochs[-1] and self.held:
            if self.args.keep_mask:  # the forward-only masks become permanent
                for name, mask in self.held.items():
                    current = ctx.masks.masks.get(name)
                    ctx.masks.set(name, mask if current is None else mask * current.to(mask.dtype), ctx.optimizer)
            self.held = {}

    def state_dict(self) -> dict[str, Any]:
        state = self.pruner.state_dict()
        if self.transient:
            state["held"] = {n: m.clone() for n, m in self.held.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state)
        self.held = {n: m.clone() for n, m in state.get("held", {}).items()}
