"""Knowledge distillation: a teacher's outputs (and features) become loss terms of the model being trained.

The training loop does not change. While a `distiller` policy is active, `on_minibatch_begin` puts hooks
on the model: a forward pre-hook runs the teacher on the model's own inputs (eval mode, no_grad), and
forward hooks keep the model's output and the named feature layers' outputs of both networks.
`before_backward_pass` removes the hooks and returns the named terms. Outside that window the model has
no hook of ours, so validation, export and inactive epochs run the model exactly as without distillation.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from .distributed import average_gradient
from .errors import ArgumentError, ScheduleError, did_you_mean
from .masks import canonical
from .modules import eval_mode, unwrap
from .policy import Component, Context, Step, Timing
from .quantization import QuantActivation, QuantLayer
from .registry import DISTILLERS
from .thinning import apply_recipe

log = logging.getLogger(__name__)

OutputLoss = Literal["l1", "l2", "kl"]
FeatureLoss = Literal["l1", "l2", "cwd"]
FEATURE_KEYS = ("student", "teacher", "loss", "tau", "weight", "connector")
SELF = "self"


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton's soft-target loss as Distiller computes it: T^2 * KL(softmax(t/T) || softmax(s/T)) over dim 1.

    Summed over classes and averaged over the batch (and over any further positions), so for (N, C)
    logits it is `F.kl_div(..., reduction='batchmean') * T**2`; the T^2 keeps the gradients' scale
    independent of T.
    """
    log_s = F.log_softmax(student / temperature, dim=1)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1).mean() * temperature ** 2


def channel_wise_divergence(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., 2021): each channel's map, softmax-normalised over its
    positions at temperature tau, matched by KL(teacher || student); tau^2 * sum / (N * C)."""
    n, c = student.shape[:2]
    log_s = F.log_softmax(student.reshape(n * c, -1) / tau, dim=1)
    log_t = F.log_softmax(teacher.reshape(n * c, -1) / tau, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum() * tau ** 2 / (n * c)


def output_distance(kind: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The distillation loss of two outputs: mean |s - t| (l1), mean (s - t)^2 (l2), or kl_divergence."""
    if kind == "l1":
        return F.l1_loss(student, teacher)
    if kind == "l2":
        return F.mse_loss(student, teacher)
    return kl_divergence(student, teacher, temperature)


def feature_distance(kind: str, student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """The loss of a feature pair: mean |s - t| (l1), mean (s - t)^2 (l2, FitNets), or channel_wise_divergence."""
    if kind == "cwd":
        return channel_wise_divergence(student, teacher, tau)
    return output_distance(kind, student, teacher)


@dataclass(frozen=True)
class FeaturePair:
    """One `features:` item: which student layer's output is matched to which teacher layer's, and how."""

    student: str
    teacher: str
    loss: str = "l2"
    tau: float = 1.0
    weight: float = 1.0
    connector: str = "auto"


@dataclass
class _Capture:
    """What one forward pass of the model produced, and the teacher's answer to the same input."""

    teacher_output: Any = None
    output: Any = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)


def _number(key: str | tuple, value: float, minimum: float, strict: bool) -> float:
    if (value <= minimum) if strict else (value < minimum):
        raise ArgumentError(key, f"must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _parse_features(features: list[dict[str, Any]]) -> list[FeaturePair]:
    pairs = []
    for i, item in enumerate(features):
        for key in item:
            if key not in FEATURE_KEYS:
                raise ArgumentError(("features", i, key), f"unknown key '{key}'",
                                    hint=did_you_mean(str(key), FEATURE_KEYS) or f"keys: {', '.join(FEATURE_KEYS)}")
        for key in ("student", "teacher"):
            if not isinstance(item.get(key), str):
                raise ArgumentError(("features", i), f"needs '{key}': a layer name, got {item.get(key)!r}",
                                    hint="e.g. {student: mid_part.3, teacher: mid_part.3}")
        loss = item.get("loss", "l2")
        if loss not in FeatureLoss.__args__:
            raise ArgumentError(("features", i, "loss"), f"unknown feature loss {loss!r}",
                                hint=did_you_mean(str(loss), FeatureLoss.__args__)
                                or f"feature losses: {', '.join(FeatureLoss.__args__)}")
        connector = item.get("connector", "auto")
        if connector not in ("auto", "none"):
            raise ArgumentError(("features", i, "connector"), f"must be 'auto' or 'none', got {connector!r}",
                                hint="auto: a 1x1 conv when the channel counts differ; none: they must match")
        numbers = {}
        for key in ("tau", "weight"):
            value = item.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ArgumentError(("features", i, key), f"must be a number, got {value!r}")
            numbers[key] = _number(("features", i, key), value, 0.0, strict=key == "tau")
        if "tau" in item and loss != "cwd":
            raise ArgumentError(("features", i, "tau"), f"tau applies to loss: cwd, not {loss}",
                                hint="remove tau or use loss: cwd")
        pairs.append(FeaturePair(item["student"], item["teacher"], loss, numbers["tau"], numbers["weight"],
                                 connector))
    return pairs


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Sub-modules by canonical name (no `module.` prefix of DataParallel / DDP)."""
    return {canonical(n): m for n, m in model.named_modules() if n}


def _check_layer(model: nn.Module, name: str, key: tuple, whose: str) -> None:
    layers = _layers(model)
    if name not in layers:
        raise ArgumentError(key, f"{whose} has no layer '{name}'",
                            hint=did_you_mean(name, layers) or "list its layers with [n for n, _ in model.named_modules()]")


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if torch.is_tensor(value) else type(value).__name__


@torch.no_grad()
def _probe(model: nn.Module, x: torch.Tensor, layers: list[str]) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run `model` once in eval mode on `x`: its output and the outputs of `layers` (modes restored after)."""
    found: dict[str, torch.Tensor] = {}
    by_name = _layers(model)
    handles = [by_name[n].register_forward_hook(lambda _m, _a, out, n=n: found.__setitem__(n, out)) for n in layers]
    try:
        with eval_mode(model):
            output = model(x)
    finally:
        for h in handles:
            h.remove()
    return output, found


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` to teach with: without the original's hooks (they belong to the components
    watching the model), without fake quantization (the full-precision network), eval mode, no gradients."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for key, value in vars(module).items():
            if "_hooks" in key and isinstance(value, dict):
                memo[id(value)] = type(value)()
    teacher = copy.deepcopy(unwrap(model), memo)
    for module in teacher.modules():
        if isinstance(module, (QuantLayer, QuantActivation)):
            module.quant_enabled = False
    teacher.requires_grad_(False)
    return teacher.eval()


def _connector(student: torch.Tensor, teacher: torch.Tensor, device: torch.device) -> nn.Module:
    """A FitNets regressor from the student's channels to the teacher's: 1x1 conv (maps) or linear (vectors).

    Initialised from a fixed seed in a forked RNG, so building a schedule never moves the global RNG. It is
    not inside the model's DDP wrapper, so under DDP its gradients are averaged over the ranks by a hook.
    """
    cin, cout = student.shape[1], teacher.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = nn.Conv2d(cin, cout, 1) if student.dim() == 4 else nn.Linear(cin, cout)
    layer = layer.to(device)
    for p in layer.parameters():
        p.register_post_accumulate_grad_hook(average_gradient)
    return layer


@DISTILLERS.register()
class KnowledgeDistillation(Component):
    """Adds `distill_weight * output_loss(model output, teacher output)` and, per `features` pair,
    `weight * loss(connector(student layer output), teacher layer output)`; scales the task loss by
    `student_weight`. `teacher: self` is a frozen full-precision copy of the model taken at the policy's
    first epoch; any other name is a module the caller passed as `teachers={name: module}`.
    """

    def __init__(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None, teacher: str = SELF,
                 output_loss: OutputLoss = "l1", temperature: float = 1.0, student_weight: float = 1.0,
                 distill_weight: float = 1.0, features: list[dict[str, Any]] | None = None,
                 name: str | None = None, teachers: Mapping[str, nn.Module] | None = None,
                 dummy_input: torch.Tensor | None = None):
        self.name = name or type(self).__name__
        self.model, self.optimizer = model, optimizer
        self.output_loss = output_loss
        self.temperature = _number("temperature", temperature, 0.0, strict=True)
        if output_loss != "kl" and self.temperature != 1.0:
            raise ArgumentError("temperature", f"temperature applies to output_loss: kl, not {output_loss}",
                                hint="remove temperature, or use output_loss: kl (classification logits)")
        self.student_weight = _number("student_weight", student_weight, 0.0, strict=False)
        self.distill_weight = _number("distill_weight", distill_weight, 0.0, strict=False)
        self.features = _parse_features(features or [])
        self.teacher_name = teacher
        self.teacher: nn.Module | None = None if teacher == SELF else self._given_teacher(teacher, teachers or {})
        self.teacher_recipe: list[dict[str, Any]] = []
        self.connectors: dict[int, nn.Module] = {}
        self._hooks: list[Any] = []
        self._captures: list[_Capture] = []
        self._checked = False
        if model is not None:
            self._check_layers(model)
            if dummy_input is not None:
                self._check_shapes(model, dummy_input)
            elif self.features:
                raise ArgumentError("features", "feature distillation needs the layers' shapes to choose the "
                                    "connectors", hint="pass dummy_input=torch.zeros(1, C, H, W) (one input of the "
                                    "model) to compress.file_config / dict_config")

    # ---- build-time checks -----------------------------------------------------------------------
    def _given_teacher(self, name: str, teachers: Mapping[str, nn.Module]) -> nn.Module:
        if name not in teachers:
            passed = ", ".join(f"'{n}'" for n in teachers) or "none"
            near = did_you_mean(name, teachers)
            raise ArgumentError("teacher", f"no teacher named '{name}' was passed in (passed: {passed})",
                                hint=(near + " " if near else "") + f"use teacher: self, or pass teachers={{'{name}': "
                                "module}} to compress.file_config / dict_config (train.py passes --kd_teacher "
                                "CHECKPOINT as 'teacher')")
        module = teachers[name]
        if not isinstance(module, nn.Module):
            raise ArgumentError("teacher", f"teacher '{name}' is a {type(module).__name__}, not a torch module")
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            raise ArgumentError("teacher", f"teacher '{name}' is wrapped in {type(module).__name__}",
                                hint="pass the bare module (wrapper.module): the teacher only runs forward, on "
                                     "each process's own batch, and needs no gradient synchronisation")
        if self.model is not None and unwrap(self.model) is module:
            raise ArgumentError("teacher", f"teacher '{name}' is the model being trained",
                                hint="use teacher: self for a frozen copy of it")
        first = next(module.parameters(), None)
        own = next(self.model.parameters(), None) if self.model is not None else None
        if first is not None and own is not None and first.device != own.device:
            raise ArgumentError("teacher", f"teacher '{name}' is on {first.device}, the model on {own.device}",
                                hint="move the teacher to the model's device before building the schedule")
        if self.optimizer is not None:
            trained = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
            if any(id(p) in trained for p in module.parameters()):
                raise ArgumentError("teacher", f"teacher '{name}' has parameters in the optimizer",
                                    hint="the teacher is frozen: give the optimizer only the model's parameters")
        return module

    def _check_layers(self, model: nn.Module) -> None:
        teacher = model if self.teacher is None else self.teacher
        whose = "the teacher (the model itself)" if self.teacher is None else f"teacher '{self.teacher_name}'"
        for i, pair in enumerate(self.features):
            _check_layer(model, pair.student, ("features", i, "student"), "the model")
            _check_layer(teacher, pair.teacher, ("features", i, "teacher"), whose)

    def _check_shapes(self, model: nn.Module, dummy_input: torch.Tensor) -> None:
        """Probe the model and the teacher on the dummy input; make the connectors the pairs need."""
        student = unwrap(model)
        s_layers, t_layers = {p.student for p in self.features}, {p.teacher for p in self.features}
        if self.teacher is None:
            out, s_feats = _probe(student, dummy_input, sorted(s_layers | t_layers))
            t_out, t_feats = out, s_feats
        else:
            out, s_feats = _probe(student, dummy_input, sorted(s_layers))
            try:
                t_out, t_feats = _probe(self.teacher, dummy_input, sorted(t_layers))
            except Exception as exc:  # the caller's module: any error means it cannot take the model's input
                raise ArgumentError("teacher", f"teacher '{self.teacher_name}' cannot run on the model's input "
                                    f"{_shape(dummy_input)}: {type(exc).__name__}: {str(exc)[:300]}",
                                    hint="the teacher runs on the model's own inputs: wrap it in a module that "
                                         "adapts the input if it takes another") from None
        self._check_outputs(out, t_out, "for the dummy input")
        self._checked = True
        device = next(student.parameters()).device
        for i, pair in enumerate(self.features):
            s, t = s_feats[pair.student], t_feats[pair.teacher]
            if not (torch.is_tensor(s) and torch.is_tensor(t)):
                raise ArgumentError(("features", i), f"layers '{pair.student}' / '{pair.teacher}' must output "
                                    f"tensors, got {_shape(s)} / {_shape(t)}")
            if s.dim() < 2 or s.dim() != t.dim() or s.shape[2:] != t.shape[2:]:
                raise ArgumentError(("features", i), f"the model's '{pair.student}' gives {_shape(s)}, the "
                                    f"teacher's '{pair.teacher}' {_shape(t)}: only the channel counts may differ",
                                    hint="pair layers of the same resolution")
            if pair.loss == "cwd" and s.dim() < 3:
                raise ArgumentError(("features", i, "loss"), f"cwd needs feature maps (N, C, H, W), "
                                    f"'{pair.student}' gives {_shape(s)}", hint="use l2 or l1")
            if s.shape[1] == t.shape[1]:
                continue
            if pair.connector == "none":
                raise ArgumentError(("features", i, "connector"), f"the model's '{pair.student}' has {s.shape[1]} "
                                    f"channels, the teacher's '{pair.teacher}' {t.shape[1]}",
                                    hint="use connector: auto (a 1x1 conv from the student's channels to the teacher's)")
            if s.dim() not in (2, 4):
                raise ArgumentError(("features", i), f"a connector maps (N, C) or (N, C, H, W) features, "
                                    f"'{pair.student}' gives {_shape(s)}", hint="pair layers with equal channels")
            self.connectors[i] = _connector(s, t, device)

    def _check_outputs(self, out: Any, t_out: Any, when: str) -> None:
        if not (torch.is_tensor(out) and torch.is_tensor(t_out)) or out.shape != t_out.shape:
            who = "the model itself" if self.teacher is None else f"teacher '{self.teacher_name}'"
            message = (f"{who} gives outputs of shape {_shape(t_out)}, the model {_shape(out)} {when}; "
                       "distillation compares outputs element by element")
            raise ArgumentError("teacher", message, hint="the teacher must produce what the model produces from "
                                "the same input (wrap it in a module that adapts the input if it takes another)")
        if self.output_loss == "kl" and out.dim() > 1 and out.shape[1] == 1:
            raise ArgumentError("output_loss", f"kl over a single channel is always 0 (outputs {_shape(out)})",
                                hint="kl is for classification logits (N, classes); use l1 or l2 for images")

    # ---- hooks -----------------------------------------------------------------------------------
    def prepare(self, ctx: Context) -> None:
        """The connectors join the optimizer as their own parameter group."""
        params = [p for c in self.connectors.values() for p in c.parameters()]
        optimizer = ctx.optimizer
        if params and optimizer is not None:
            known = {id(p) for g in optimizer.param_groups for p in g["params"]}
            if not any(id(p) in known for p in params):
                optimizer.add_param_group({"params": params})

    def on_epoch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        """The first scheduled epoch takes the `self` teacher (before the other components act)."""
        self._ensure_teacher(ctx)

    def on_minibatch_begin(self, ctx: Context, step: Step, timing: Timing) -> None:
        """Put the hooks on for this minibatch's forward pass."""
        self._ensure_teacher(ctx)
        self._remove_hooks()
        self._captures = []
        model, teacher = ctx.model, self.teacher
        self._hooks.append(model.register_forward_pre_hook(self._run_teacher, with_kwargs=True))
        self._hooks.append(model.register_forward_hook(self._keep_output))
        student_layers, teacher_layers = _layers(model), _layers(teacher)
        for name in {p.student for p in self.features}:
            self._hooks.append(student_layers[name].register_forward_hook(self._keeper("student_features", name)))
        for name in {p.teacher for p in self.features}:
            self._hooks.append(teacher_layers[name].register_forward_hook(self._keeper("teacher_features", name)))

    def before_backward_pass(self, ctx: Context, step: Step, timing: Timing) -> dict[str, torch.Tensor]:
        """Remove the hooks; the distillation terms of the forward passes since on_minibatch_begin."""
        self._remove_hooks()
        captures, self._captures = self._captures, []
        if not captures or any(c.output is None for c in captures):
            raise RuntimeError(f"distiller '{self.name}': the model did not run between on_minibatch_begin and "
                               "before_backward_pass; call scheduler.on_minibatch_begin(...) before the forward pass")
        terms: dict[str, torch.Tensor] = {}
        for capture in captures:
            for key, value in self._terms(capture).items():
                terms[key] = terms[key] + value if key in terms else value
        terms = {k: v / len(captures) for k, v in terms.items()}
        if self.student_weight != 1.0:
            if step.loss is None:
                raise RuntimeError(f"distiller '{self.name}': student_weight needs the task loss in before_backward_pass")
            terms[f"{self.name}.student"] = (self.student_weight - 1.0) * step.loss
        return terms

    def on_epoch_end(self, ctx: Context, step: Step, timing: Timing) -> None:
        """No hook outlives the epoch (a loop that skipped before_backward_pass)."""
        self._remove_hooks()
        self._captures = []

    def _ensure_teacher(self, ctx: Context) -> None:
        if self.teacher is None:
            self.teacher = frozen_copy(ctx.model)
            self.teacher_recipe = _thinning_so_far(ctx)
            log.info("distiller '%s': teacher is a frozen copy of the model as of now", self.name)

    def _run_teacher(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        capture = _Capture()
        self._captures.append(capture)
        self.teacher.eval()
        with torch.no_grad():
            capture.teacher_output = self.teacher(*args, **kwargs)

    def _keep_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._captures[-1].output = output

    def _keeper(self, where: str, name: str):
        def keep(module: nn.Module, args: tuple, output: Any) -> None:
            getattr(self._captures[-1], where)[name] = output

        return keep

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _terms(self, capture: _Capture) -> dict[str, torch.Tensor]:
        if not self._checked:  # without a dummy input the shapes are first seen here
            try:
                self._check_outputs(capture.output, capture.teacher_output, "(found at the first distillation step)")
            except ArgumentError as exc:
                raise ScheduleError(str(exc), key_path=f"distillers.{self.name}.teacher", hint=exc.hint) from None
            self._checked = True
        terms = {}
        if self.distill_weight:
            terms[f"{self.name}.output"] = self.distill_weight * output_distance(
                self.output_loss, capture.output, capture.teacher_output, self.temperature)
        for i, pair in enumerate(self.features):
            s = capture.student_features.get(pair.student)
            t = capture.teacher_features.get(pair.teacher)
            if s is None or t is None:
                missing = pair.student if s is None else pair.teacher
                raise RuntimeError(f"distiller '{self.name}': layer '{missing}' did not run in the forward pass")
            if i in self.connectors:
                s = self.connectors[i](s)
            if s.shape != t.shape:
                raise RuntimeError(f"distiller '{self.name}': features[{i}] '{pair.student}' gives {_shape(s)} "
                                   f"(after its connector), the teacher's '{pair.teacher}' {_shape(t)}; thinning "
                                   "changed the layer's channels: list it under the thinning extension's protected")
            terms[f"{self.name}.feature[{i}]"] = pair.weight * feature_distance(pair.loss, s, t, pair.tau)
        return terms

    # ---- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The connectors' weights, and for `teacher: self` the copy's weights and the thinning it had seen."""
        own = self.teacher_name == SELF and self.teacher is not None
        return {"connectors": {str(i): {k: v.detach().clone() for k, v in c.state_dict().items()}
                               for i, c in self.connectors.items()},
                "teacher": {k: v.detach().clone() for k, v in self.teacher.state_dict().items()} if own else None,
                "teacher_recipe": [dict(s) for s in self.teacher_recipe] if own else []}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the connectors in place (the optimizer holds them) and rebuild a saved `self` teacher
        from the freshly built model (called before thinning and quantization restore their state)."""
        for key, weights in state.get("connectors", {}).items():
            if int(key) not in self.connectors:
                raise KeyError(f"distiller '{self.name}' state has a connector for features[{key}], which this "
                               "schedule does not need (was the checkpoint made with another schedule?)")
            self.connectors[int(key)].load_state_dict(weights)
        saved = state.get("teacher")
        if saved is not None and self.teacher_name == SELF:
            teacher = frozen_copy(self.model)
            recipe = list(state.get("teacher_recipe", []))
            if recipe:
                apply_recipe(teacher, recipe)
            teacher.load_state_dict(saved)
            self.teacher, self.teacher_recipe = teacher, recipe


def _thinning_so_far(ctx: Context) -> list[dict[str, Any]]:
    """The thinning steps already applied to the model, in the order they ran (from the extensions' state)."""
    steps = []
    for policy in getattr(ctx.scheduler, "policies", []):
        if policy.kind == "extension":
            steps += policy.component.state_dict().get("recipe", [])
    return sorted(steps, key=lambda s: -1 if s.get("epoch") is None else s["epoch"])


__all__ = ["FeaturePair", "KnowledgeDistillation", "channel_wise_divergence", "feature_distance", "frozen_copy",
           "kl_divergence", "output_distance"]
