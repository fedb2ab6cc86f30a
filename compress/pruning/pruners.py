"""The pruner classes a schedule can name: Distiller's names as thin factories over `Pruner`.

Each factory only turns its arguments into targets (criterion + level schedule); it does not look
at the model. Weight names are checked against the model by the config builder. Names are taken
as Distiller writes them too: a single weight as a string, and DataParallel's `module` segments
anywhere (`module.fc.weight`, `features.module.0.weight`).
"""
from __future__ import annotations

import logging
from typing import Any, Literal

from ..errors import ArgumentError
from ..masks import canonical
from ..registry import PRUNERS
from .criteria import (
    ActivationRank,
    ActivationStats,
    BernoulliFilters,
    Criterion,
    GlobalMagnitudeLevel,
    GradientRank,
    MagnitudeLevel,
    MagnitudeThreshold,
    RandomLevel,
    RandomRank,
    RankedBlocks,
    RankedStructures,
    StdThreshold,
)
from .levels import AGPLevel, ConstantLevel
from .pruner import WILDCARD, Level, Pruner, Target

log = logging.getLogger(__name__)

GroupType = Literal["3D", "Filters", "Channels", "Rows", "Cols", "Blocks"]
FilterType = Literal["3D", "Filters"]
#: Distiller's group types -> the dimension kind they prune. 'Rows' is Distiller's: it ranks the input
#: channels (the columns of a Linear weight, stored transposed), as its ranked pruners do.
GROUP_KINDS = {"3D": "filters", "Filters": "filters", "Rows": "channels", "Channels": "channels", "Cols": "channels"}


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


def _weights(weights: list[str] | str, key: str = "weights") -> list[str]:
    """Canonical weight names, in order; a single name may be given as a string, a repeat is dropped."""
    names = [weights] if isinstance(weights, str) else list(weights)
    if not names:
        raise ArgumentError(key, "no weights listed", hint="name parameters as in model.named_parameters()")
    out = list(dict.fromkeys(canonical(w) for w in names))
    if len(out) != len(names):
        log.warning("%s lists a weight more than once (DataParallel's 'module' segments aside); pruned once", key)
    return out


def _named(values: dict[str, Any], key: str) -> dict[str, tuple[str, Any]]:
    """{canonical name: (name as written, value)} for a mapping keyed by weight names."""
    out: dict[str, tuple[str, Any]] = {}
    for w, v in values.items():
        name = canonical(str(w))
        if name in out and out[name][1] != v:
            raise ArgumentError((key, w), f"'{w}' and '{out[name][0]}' name the same weight with different values")
        out.setdefault(name, (w, v))
    return out


def _targets(weights: list[str], criterion: Criterion, schedule: Level, leader: bool) -> list[Target]:
    if leader:
        return [Target(tuple(weights), criterion, schedule, ("weights",))]
    return [Target((w,), criterion, schedule, ("weights", i)) for i, w in enumerate(weights)]


def _round_to(value: int) -> int:
    if value < 1:
        raise ArgumentError("round_to", f"round_to must be >= 1, got {value}",
                            hint="8 keeps a multiple of 8 channels in each group; 1 rounds nothing")
    return value


def _block_shape(kwargs: dict[str, Any] | None) -> tuple[int, int, int, int]:
    """Distiller's `kwargs: {block_shape: [filters, channels, height, width]}` of a Blocks pruner."""
    extra = sorted(set(kwargs or {}) - {"block_shape"})
    if extra:
        raise ArgumentError(("kwargs", extra[0]), "unknown key", hint="kwargs takes block_shape")
    shape = (kwargs or {}).get("block_shape")
    if shape is None:
        raise ArgumentError("kwargs", "group_type Blocks needs kwargs: {block_shape: [filters, channels, 1, 1]}")
    if (not isinstance(shape, list) or len(shape) != 4
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape)):
        raise ArgumentError(("kwargs", "block_shape"), f"expected 4 positive integers, got {shape!r}")
    if shape[2:] != [1, 1]:
        raise ArgumentError(("kwargs", "block_shape"), f"block height and width must be 1, got {shape!r}",
                            hint="as in Distiller: blocks are [filters, channels, 1, 1]")
    return tuple(shape)  # type: ignore[return-value]


def _structured(p: Literal[1, 2], group_type: str, weights: list[str] | str, schedule: Level,
                group_dependency: str | None, round_to: int, kwargs: dict[str, Any] | None = None) -> list[Target]:
    names = _weights(weights)
    if group_type == "Blocks":
        if group_dependency is not None:
            raise ArgumentError("group_dependency", "Blocks are ranked within each weight; they have no leader")
        return _targets(names, RankedBlocks(p, _block_shape(kwargs)), schedule, False)
    if kwargs:
        raise ArgumentError("kwargs", f"kwargs (block_shape) goes with group_type Blocks, not {group_type}")
    criterion = RankedStructures(p, GROUP_KINDS[group_type], leader=group_dependency == "Leader",
                                 round_to=_round_to(round_to))
    return _targets(names, criterion, schedule, group_dependency == "Leader")


@PRUNERS.register()
def AutomatedGradualPruner(initial_sparsity: float, final_sparsity: float, weights: list[str] | str,
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
    return Pruner([Target((w,), MagnitudeLevel(), ConstantLevel(_check_level(("levels", raw), lv)), ("levels", raw))
                   for w, (raw, lv) in _named(levels, "levels").items()], name)


@PRUNERS.register()
def MagnitudeParameterPruner(thresholds: dict[str, float], name: str | None = None) -> Pruner:
    """Prune weights with |w| <= threshold; '*' is the threshold of every weight not listed."""
    targets = []
    for w, (raw, t) in _named(thresholds, "thresholds").items():
        if t < 0:
            raise ArgumentError(("thresholds", raw), f"threshold must be >= 0, got {t}")
        targets.append(Target((w,), MagnitudeThreshold(), ConstantLevel(float(t)), ("thresholds", raw)))
    return Pruner(targets, name)


@PRUNERS.register()
def SensitivityPruner(sensitivities: dict[str, float], name: str | None = None) -> Pruner:
    """Prune weights with |w| <= sensitivity * std(w) (Han et al.); '*' covers the unlisted weights."""
    targets = []
    for w, (raw, s) in _named(sensitivities, "sensitivities").items():
        if s < 0:
            raise ArgumentError(("sensitivities", raw), f"sensitivity must be >= 0, got {s}")
        targets.append(Target((w,), StdThreshold(), ConstantLevel(float(s)), ("sensitivities", raw)))
    return Pruner(targets, name)


def _ranked(p: Literal[1, 2], name: str | None, reg_regims: dict[str, list] | None, group_type: str | None,
            desired_sparsity: float | None, weights: list[str] | str | None, group_dependency: str | None,
            round_to: int, kwargs: dict[str, Any] | None) -> Pruner:
    if reg_regims is not None:
        if any(v is not None for v in (group_type, desired_sparsity, weights)):
            raise ValueError("give either reg_regims or group_type/desired_sparsity/weights, not both")
        items = [(w, raw, regime) for w, (raw, regime) in _named(reg_regims, "reg_regims").items()]
        for _, raw, regime in items:
            if (not isinstance(regime, list) or len(regime) != 2 or isinstance(regime[0], bool)
                    or not isinstance(regime[0], (int, float)) or regime[1] not in GROUP_KINDS):
                raise ArgumentError(("reg_regims", raw), f"expected [sparsity, group type], got {regime!r}",
                                    hint=f"e.g. [0.4, '3D']; group types: {', '.join(GROUP_KINDS)}")
            _check_level(("reg_regims", raw), regime[0])
        if group_dependency == "Leader":
            kinds = {GROUP_KINDS[r[1]] for _, _, r in items}
            levels = {float(r[0]) for _, _, r in items}
            if len(kinds) > 1 or len(levels) > 1:
                raise ArgumentError("group_dependency", "a Leader group needs one sparsity and one group type "
                                    "for all its weights")
            crit = RankedStructures(p, kinds.pop(), leader=True, round_to=_round_to(round_to))
            return Pruner([Target(tuple(w for w, _, _ in items), crit, ConstantLevel(levels.pop()),
                                  ("reg_regims",))], name)
        return Pruner([Target((w,), RankedStructures(p, GROUP_KINDS[gtype], round_to=_round_to(round_to)),
                              ConstantLevel(float(level)), ("reg_regims", raw))
                       for w, raw, (level, gtype) in items], name)
    missing = [k for k, v in (("group_type", group_type), ("desired_sparsity", desired_sparsity),
                              ("weights", weights)) if v is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or give reg_regims: {{weight: [sparsity, '3D']}})")
    level = ConstantLevel(_check_level("desired_sparsity", desired_sparsity))
    return Pruner(_structured(p, group_type, weights, level, group_dependency, round_to, kwargs), name)


@PRUNERS.register()
def L1RankedStructureParameterPruner(reg_regims: dict[str, list] | None = None, group_type: GroupType | None = None,
                                     desired_sparsity: float | None = None, weights: list[str] | str | None = None,
                                     group_dependency: Literal["Leader"] | None = None, round_to: int = 1,
                                     kwargs: dict[str, Any] | None = None, name: str | None = None) -> Pruner:
    """One-shot pruning of the filters / channels with the smallest L1 norm (Li et al. 2017).

    `group_type: Blocks` with `kwargs: {block_shape: [filters, channels, 1, 1]}` ranks blocks of one weight.
    `round_to` (not in Distiller): each group keeps a multiple of that many channels (rounded up).
    """
    return _ranked(1, name, reg_regims, group_type, desired_sparsity, weights, group_dependency, round_to, kwargs)


@PRUNERS.register()
def L2RankedStructureParameterPruner(reg_regims: dict[str, list] | None = None, group_type: GroupType | None = None,
                                     desired_sparsity: float | None = None, weights: list[str] | str | None = None,
                                     group_dependency: Literal["Leader"] | None = None, round_to: int = 1,
                                     kwargs: dict[str, Any] | None = None, name: str | None = None) -> Pruner:
    """One-shot pruning of the filters / channels with the smallest L2 norm."""
    return _ranked(2, name, reg_regims, group_type, desired_sparsity, weights, group_dependency, round_to, kwargs)


@PRUNERS.register()
def L1RankedStructureParameterPruner_AGP(initial_sparsity: float, final_sparsity: float, group_type: GroupType,
                                         weights: list[str] | str, group_dependency: Literal["Leader"] | None = None,
                                         round_to: int = 1, kwargs: dict[str, Any] | None = None,
                                         name: str | None = None) -> Pruner:
    """Filters / channels (or blocks) with the smallest L1 norm, pruned along the AGP curve."""
    return Pruner(_structured(1, group_type, weights, _agp(initial_sparsity, final_sparsity), group_dependency,
                              round_to, kwargs), name)


@PRUNERS.register()
def L2RankedStructureParameterPruner_AGP(initial_sparsity: float, final_sparsity: float, group_type: GroupType,
                                         weights: list[str] | str, group_dependency: Literal["Leader"] | None = None,
                                         round_to: int = 1, kwargs: dict[str, Any] | None = None,
                                         name: str | None = None) -> Pruner:
    """Filters / channels (or blocks) with the smallest L2 norm, pruned along the AGP curve."""
    return Pruner(_structured(2, group_type, weights, _agp(initial_sparsity, final_sparsity), group_dependency,
                              round_to, kwargs), name)


def _filters_only(group_dependency: str | None, what: str) -> None:
    if group_dependency is not None:
        raise ArgumentError("group_dependency", f"{what} ranks each weight's filters by its own statistic",
                            hint="remove group_dependency; coupled layers are still pruned together")


def _activation(statistic: Literal["apoz", "mean"], weights: list[str] | str, schedule: Level,
                group_dependency: str | None, activations: dict[str, str] | None, round_to: int,
                name: str | None) -> Pruner:
    _filters_only(group_dependency, "activation ranking")
    named = tuple((w, str(m)) for w, (_, m) in _named(activations or {}, "activations").items())
    criterion = ActivationRank(statistic, ActivationStats(), named, _round_to(round_to))
    return Pruner(_targets(_weights(weights), criterion, schedule, False), name)


@PRUNERS.register()
def ActivationAPoZRankedFilterPruner(desired_sparsity: float, group_type: FilterType, weights: list[str] | str,
                                     group_dependency: Literal["Leader"] | None = None,
                                     activations: dict[str, str] | None = None, round_to: int = 1,
                                     name: str | None = None) -> Pruner:
    """One-shot pruning of the filters whose activations are most often zero (APoZ, Hu et al. 2016).

    The statistics are collected by forward hooks on each conv's activation (`x.convN` -> `x.reluN`, as
    Distiller finds it, or `activations: {weight: module}`) over the forward passes since the last step.
    """
    return _activation("apoz", weights, ConstantLevel(_check_level("desired_sparsity", desired_sparsity)),
                       group_dependency, activations, round_to, name)


@PRUNERS.register()
def ActivationAPoZRankedFilterPruner_AGP(initial_sparsity: float, final_sparsity: float, group_type: FilterType,
                                         weights: list[str] | str, group_dependency: Literal["Leader"] | None = None,
                                         activations: dict[str, str] | None = None, round_to: int = 1,
                                         name: str | None = None) -> Pruner:
    """APoZ filter ranking (see ActivationAPoZRankedFilterPruner) along the AGP curve."""
    return _activation("apoz", weights, _agp(initial_sparsity, final_sparsity), group_dependency, activations,
                       round_to, name)


@PRUNERS.register()
def ActivationMeanRankedFilterPruner(desired_sparsity: float, group_type: FilterType, weights: list[str] | str,
                                     group_dependency: Literal["Leader"] | None = None,
                                     activations: dict[str, str] | None = None, round_to: int = 1,
                                     name: str | None = None) -> Pruner:
    """One-shot pruning of the filters with the smallest mean activation (Molchanov et al. 2017)."""
    return _activation("mean", weights, ConstantLevel(_check_level("desired_sparsity", desired_sparsity)),
                       group_dependency, activations, round_to, name)


@PRUNERS.register()
def ActivationMeanRankedFilterPruner_AGP(initial_sparsity: float, final_sparsity: float, group_type: FilterType,
                                         weights: list[str] | str, group_dependency: Literal["Leader"] | None = None,
                                         activations: dict[str, str] | None = None, round_to: int = 1,
                                         name: str | None = None) -> Pruner:
    """Mean-activation filter ranking along the AGP curve."""
    return _activation("mean", weights, _agp(initial_sparsity, final_sparsity), group_dependency, activations,
                       round_to, name)


@PRUNERS.register()
def GradientRankedFilterPruner(desired_sparsity: float, group_type: FilterType, weights: list[str] | str,
                               group_dependency: Literal["Leader"] | None = None, name: str | None = None) -> Pruner:
    """One-shot pruning of the filters with the lowest sum of weight x gradient (the last backward's gradient)."""
    _filters_only(group_dependency, "gradient ranking")
    return Pruner(_targets(_weights(weights), GradientRank(),
                           ConstantLevel(_check_level("desired_sparsity", desired_sparsity)), False), name)


@PRUNERS.register()
def GradientRankedFilterPruner_AGP(initial_sparsity: float, final_sparsity: float, group_type: FilterType,
                                   weights: list[str] | str, group_dependency: Literal["Leader"] | None = None,
                                   name: str | None = None) -> Pruner:
    """Gradient-times-weight filter ranking along the AGP curve."""
    _filters_only(group_dependency, "gradient ranking")
    return Pruner(_targets(_weights(weights), GradientRank(), _agp(initial_sparsity, final_sparsity), False), name)


@PRUNERS.register()
def RandomRankedFilterPruner(desired_sparsity: float, group_type: FilterType, weights: list[str] | str,
                             group_dependency: Literal["Leader"] | None = None, seed: int = 0,
                             name: str | None = None) -> Pruner:
    """One-shot pruning of randomly chosen filters (a baseline for the ranking criteria)."""
    _filters_only(group_dependency, "random ranking")
    return Pruner(_targets(_weights(weights), RandomRank(),
                           ConstantLevel(_check_level("desired_sparsity", desired_sparsity)), False), name, seed)


@PRUNERS.register()
def RandomRankedFilterPruner_AGP(initial_sparsity: float, final_sparsity: float, group_type: FilterType,
                                 weights: list[str] | str, group_dependency: Literal["Leader"] | None = None,
                                 seed: int = 0, name: str | None = None) -> Pruner:
    """Randomly chosen filters, pruned along the AGP curve."""
    _filters_only(group_dependency, "random ranking")
    return Pruner(_targets(_weights(weights), RandomRank(), _agp(initial_sparsity, final_sparsity), False), name,
                  seed)


@PRUNERS.register()
def BernoulliFilterPruner(desired_sparsity: float, group_type: FilterType, weights: list[str] | str,
                          group_dependency: Literal["Leader"] | None = None, seed: int = 0,
                          name: str | None = None) -> Pruner:
    """DropFilter: each filter dropped with probability desired_sparsity, the others scaled up.

    Its masks are meant to last one minibatch: give its policy `discard_masks_at_minibatch_end: true`.
    """
    _filters_only(group_dependency, "DropFilter")
    return Pruner(_targets(_weights(weights), BernoulliFilters(),
                           ConstantLevel(_check_level("desired_sparsity", desired_sparsity)), False), name, seed)


@PRUNERS.register()
def BernoulliFilterPruner_AGP(initial_sparsity: float, final_sparsity: float, group_type: FilterType,
                              weights: list[str] | str, group_dependency: Literal["Leader"] | None = None,
                              seed: int = 0, name: str | None = None) -> Pruner:
    """DropFilter with a drop probability that follows the AGP curve."""
    _filters_only(group_dependency, "DropFilter")
    return Pruner(_targets(_weights(weights), BernoulliFilters(), _agp(initial_sparsity, final_sparsity), False),
                  name, seed)


@PRUNERS.register()
def RandomLevelStructureParameterPruner(sparsity_range: list[float], group_type: GroupType, weights: list[str] | str,
                                        group_dependency: Literal["Leader"] | None = None,
                                        kwargs: dict[str, Any] | None = None, seed: int = 0,
                                        name: str | None = None) -> Pruner:
    """L1-ranked structures pruned at a level drawn uniformly from sparsity_range at every step."""
    if (len(sparsity_range) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in sparsity_range)
            or not 0 <= sparsity_range[0] <= sparsity_range[1] < 1):
        raise ArgumentError("sparsity_range", f"expected [low, high] with 0 <= low <= high < 1, got {sparsity_range!r}")
    targets = _structured(1, group_type, weights, ConstantLevel(0.0), group_dependency, 1, kwargs)
    return Pruner([Target(t.params, RandomLevel(t.criterion, *map(float, sparsity_range)), t.schedule, t.key_path)
                   for t in targets], name, seed)


CRITERIA = {"magnitude": None, "l1": 1, "l2": 2}


@PRUNERS.register("Pruner")
def GenericPruner(weights: list[str] | str, final_sparsity: float,
                  criterion: Literal["magnitude", "l1", "l2"] = "magnitude",
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


#: Distiller pruners this library does not provide, and why.
NOT_SUPPORTED = {
    "SplicingPruner": "dynamic network surgery revives pruned weights, while masks here only ever grow; "
                      "prune with AutomatedGradualPruner or SensitivityPruner instead",
    "BaiduRNNPruner": "it prunes recurrent (LSTM / GRU) weights; use AutomatedGradualPruner on the weights",
    "FMReconstructionChannelPruner": "it refits weights by least squares on collected feature maps; prune "
                                     "channels with L1RankedStructureParameterPruner instead",
    "StructureParameterPruner": "it is Distiller's base class; use L1RankedStructureParameterPruner",
}
for _name, _why in NOT_SUPPORTED.items():
    PRUNERS.refuse(_name, f"Distiller's {_name} is not supported: {_why}")
