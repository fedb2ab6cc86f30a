"""Pruning: criteria (what), level schedules (how much), one Pruner, and the classes schedules name."""
from . import pruners  # noqa: F401  (registers the pruner classes)
from .criteria import MagnitudeLevel, MagnitudeThreshold, RankedStructures, StdThreshold, magnitude_level_mask
from .groups import ChannelGroup, GroupMember, GroupResolver, LocalGroups
from .levels import AGPLevel, ConstantLevel
from .pruner import Pruner, Target

__all__ = ["AGPLevel", "ChannelGroup", "ConstantLevel", "GroupMember", "GroupResolver", "LocalGroups",
           "MagnitudeLevel", "MagnitudeThreshold", "Pruner", "RankedStructures", "StdThreshold", "Target",
           "magnitude_level_mask"]
