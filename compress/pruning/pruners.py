"""The pruner classes a schedule can name: Distiller's names as thin factories over `Pruner`.

Each factory only turns its arguments into targets (criterion + level schedule); it does not look
at the model. Weight names are checked against the model by the config builder.
"""
from __future__ import annotations

from typing import Literal

from ..errors import ArgumentError
from ..registry import PRUNERS
from .criteria import (
    Criterion,
    GlobalMagnitudeLevel,
    MagnitudeLevel,
    MagnitudeThreshold,
    RankedStructures,
    StdThreshold,
)
from .levels import AGPLevel, ConstantLevel
from .pruner import WILDCARD, Level, Pruner, Target

GroupType = Literal["3D", "Filters", "Channels", "Rows", "Cols"]
#: Distiller's group types -> the dimension kind they prune ('3D' and 'Rows' are filters / output rows).
GROUP_KINDS = {"3D": "filters", "Filters": "filters", "Rows": "filters", "Channels": "channels", "Cols": "channels"}


def _check_level(key: str | tuple, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ArgumentError(key, f"sparsity must be in [0, 1), got {value}",
                            hint="0.4 prunes 40%; 1.0 would remove everything")
    return float(value)


def _agp(initial_sparsity: float, final_sparsity: float) -> AGPLevel:
    _check_level("initial_sparsity", initial_sparsity)
    _check_level("final_sparsity", final_sparsity)
    if initial_sparsity > final_sparsity:
        raise ArgumentError("initial_sparsity", f"initial_sparsity {initial_sparsity} is above "
                            f"final_sparsity {final_sparsity}", hint="gradual pruning only increases sparsity")
    return AGPLevel(float(initial_sparsity), float(final_sparsity))


def _weights(weights: list[str], key: str = "weights") -> list[str]:
    if not weights:
        raise ArgumentError(key, "no weights listed", hint="name parameters as in model.named_parameters()")
    if len(set(weights)) != len(weights):
        dup = next(w for w in weights if weights.count(w) > 1)
        raise ArgumentError(key, f"'{dup}' is listed twice")
    return list(weights)


def _targets(weights: list[str], criterion: Criterion, schedule: Level, leader: bool) -> list[Target]:
    if leader:
        return [Target(tuple(weights), criterion, schedule, ("weights",))]
    return [Target((w,), criterion, schedule, ("weights", i)) for i, w in enumerate(weights)]


def _round_to(value: int) -> int:
    if value < 1:
        raise ArgumentError("round_to", f"round_to must be >= 1, got {value}",
                            hint="8 keeps a multiple of 8 channels in each group; 1 rounds nothing")
    return value


def _structured(p: Literal[1, 2], group_type: str, weights: list[str], schedule: Level,
                group_dependency: str | None, round_to: int) -> list[Target]:
    criterion = RankedStructures(p, GROUP_KINDS[group_type], leader=group_dependency == "Leader",
                                 round_to=_round_to(round_to))
    return _targets(_weights(weights), criterion, schedule, group_dependency == "Leader")


@PRUNERS.register()
def AutomatedGradualPruner(initial_sparsity: float, final_sparsity: float, weights: list[str],
                           global_ranking: bool = False, name: str | None = None) -> Pruner:
    """Element-wise magnitude pruning along the AGP curve (Zhu & Gupta).

    `global_ranking` (not in Distiller): the level applies to all listed weights together, ranked by
    magnitude across them, instead of to each weight alone.
    """
    if global_ranking and WILDCARD in weights:
        raise ArgumentError("weights", f"'{WILDCARD}' cannot be ranked globally",
                            hint="list the weights to rank together by name, or drop global_ranking")
    criterion = GlobalMagnitudeLevel() if global_ranking else MagnitudeLevel()
    return Pruner(_targets(_weights(weights), criterion, _agp(initial_sparsity, final_sparsity), global_ranking),
                  name)


@PRUNERS.register()
def SparsityLevelParameterPruner(levels: dict[str, float], name: str | None = None) -> Pruner:
    """Element-wise magnitude pruning of each listed weight to a fixed level ('*': every other weight)."""
    return Pruner([Target((w,), MagnitudeLevel(), ConstantLevel(_check_level(("levels", w), lv)), ("levels", w))
                   for w, lv in levels.items()], name)


@PRUNERS.register()
def MagnitudeParameterPruner(thresholds: dict[str, float], name: str | None = None) -> Pruner:
    """Prune weights with |w| <= threshold; '*' is the threshold of every weight not listed."""
    for w, t in thresholds.items():
        if t < 0:
            raise ArgumentError(("thresholds", w), f"threshold must be >= 0, got {t}")
    return Pruner([Target((w,), MagnitudeThreshold(), ConstantLevel(float(t)), ("thresholds", w))
                   for w, t in thresholds.items()], name)


@PRUNERS.register()
def SensitivityPruner(sensitivities: dict[str, float], name: str | None = None) -> Pruner:
    """Prune weights with |w| <= sensitivity * std(w) (Han et al.); '*' covers the unlisted weights."""
    for w, s in sensitivities.items():
        if s < 0:
            raise ArgumentError(("sensitivities", w), f"sensitivity must be >= 0, got {s}")
    return Pruner([Target((w,), StdThreshold(), ConstantLevel(float(s)), ("sensitivities", w))
                   for w, s in sensitivities.items()], name)


def _ranked(p: Literal[1, 2], name: str | None, reg_regims: dict[str, list] | None, group_type: str | None,
            desired_sparsity: float | None, weights: list[str] | None, group_dependency: str | None,
            round_to: int) -> Pruner:
    if reg_regims is not None:
        if any(v is not None for v in (group_type, desired_sparsity, weights)):
            raise ValueError("give either reg_regims or group_type/desired_sparsity/weights, not both")
        targets = []
        items = list(reg_regims.items())
        for w, regime in items:
            if (not isinstance(regime, list) or len(regime) != 2 or isinstance(regime[0], bool)
                    or not isinstance(regime[0], (int, float)) or regime[1] not in GROUP_KINDS):
                raise ArgumentError(("reg_regims", w), f"expected [sparsity, group type], got {regime!r}",
                                    hint=f"e.g. [0.4, '3D']; group types: {', '.join(GROUP_KINDS)}")
            _check_level(("reg_regims", w), regime[0])
        if group_dependency == "Leader":
            kinds = {GROUP_KINDS[r[1]] for _, r in items}
            levels = {float(r[0]) for _, r in items}
            if len(kinds) > 1 or len(levels) > 1:
                raise ArgumentError("group_dependency", "a Leader group needs one sparsity and one group type "
                                    "for all its weights")
            crit = RankedStructures(p, kinds.pop(), leader=True, round_to=_round_to(round_to))
            return Pruner([Target(tuple(w for w, _ in items), crit, ConstantLevel(levels.pop()), ("reg_regims",))],
                          name)
        for w, (level, gtype) in items:
            targets.append(Target((w,), RankedStructures(p, GROUP_KINDS[gtype], round_to=_round_to(round_to)),
                                  ConstantLevel(float(level)),
                                  ("reg_regims", w)))
        return Pruner(targets, name)
    missing = [k for k, v in (("group_type", group_type), ("desired_sparsity", desired_sparsity),
                              ("weights", weights)) if v is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or give reg_regims: {{weight: [sparsity, '3D']}})")
    level = ConstantLevel(_check_level("desired_sparsity", desired_sparsity))
    return Pruner(_structured(p, group_type, weights, level, group_dependency, round_to), name)


@PRUNERS.register()
def L1RankedStructureParameterPruner(reg_regims: dict[str, list] | None = None, group_type: GroupType | None = None,
                                     desired_sparsity: float | None = None, weights: list[str] | None = None,
                                     group_dependency: Literal["Leader"] | None = None, round_to: int = 1,
                                     name: str | None = None) -> Pruner:
    """One-shot pruning of the filters / channels with the smallest L1 norm (Li et al. 2017).

    `round_to` (not in Distiller): each group keeps a multiple of that many channels (rounded up).
    """
    return _ranked(1, name, reg_regims, group_type, desired_sparsity, weights, group_dependency, round_to)


@PRUNERS.register()
def L2RankedStructureParameterPruner(reg_regims: dict[str, list] | None = None, group_type: GroupType | None = None,
                                     desired_sparsity: float | None = None, weights: list[str] | None = None,
                                     group_dependency: Literal["Leader"] | None = None, round_to: int = 1,
                                     name: str | None = None) -> Pruner:
    """One-shot pruning of the filters / channels with the smallest L2 norm."""
    return _ranked(2, name, reg_regims, group_type, desired_sparsity, weights, group_dependency, round_to)


@PRUNERS.register()
def L1RankedStructureParameterPruner_AGP(initial_sparsity: float, final_sparsity: float, group_type: GroupType,
                                         weights: list[str], group_dependency: Literal["Leader"] | None = None,
                                         round_to: int = 1, name: str | None = None) -> Pruner:
    """Filters / channels with the smallest L1 norm, pruned along the AGP curve."""
    return Pruner(_structured(1, group_type, weights, _agp(initial_sparsity, final_sparsity), group_dependency,
                              round_to), name)


@PRUNERS.register()
def L2RankedStructureParameterPruner_AGP(initial_sparsity: float, final_sparsity: float, group_type: GroupType,
                                         weights: list[str], group_dependency: Literal["Leader"] | None = None,
                                         round_to: int = 1, name: str | None = None) -> Pruner:
    """Filters / channels with the smallest L2 norm, pruned along the AGP curve."""
    return Pruner(_structured(2, group_type, weights, _agp(initial_sparsity, final_sparsity), group_dependency,
                              round_to), name)


CRITERIA = {"magnitude": None, "l1": 1, "l2": 2}


@PRUNERS.register("Pruner")
def GenericPruner(weights: list[str], final_sparsity: float, criterion: Literal["magnitude", "l1", "l2"] = "magnitude",
                  group_type: Literal["Element", "3D", "Filters", "Channels", "Rows", "Cols"] = "Element",
                  initial_sparsity: float | None = None, group_dependency: Literal["Leader"] | None = None,
                  round_to: int = 1, name: str | None = None) -> Pruner:
    """Any criterion with any level schedule: one-shot when initial_sparsity is omitted, else AGP."""
    if (criterion == "magnitude") != (group_type == "Element"):
        raise ArgumentError("criterion", f"criterion '{criterion}' does not go with group_type '{group_type}'",
                            hint="magnitude ranks elements (group_type: Element); l1/l2 rank Filters or Channels")
    if initial_sparsity is None:
        schedule: Level = ConstantLevel(_check_level("final_sparsity", final_sparsity))
    else:
        schedule = _agp(initial_sparsity, final_sparsity)
    if criterion == "magnitude":
        if group_dependency is not None:
            raise ArgumentError("group_dependency", "element-wise pruning has no groups to lead")
        if round_to != 1:
            raise ArgumentError("round_to", "element-wise pruning has no channels to round",
                                hint="round_to goes with criterion l1 / l2 on Filters or Channels")
        return Pruner(_targets(_weights(weights), MagnitudeLevel(), schedule, False), name)
    return Pruner(_structured(CRITERIA[criterion], group_type, weights, schedule, group_dependency, round_to), name)


