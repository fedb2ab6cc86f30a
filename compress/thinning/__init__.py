"""Thinning: physically removing pruned filters and channels (registers the thinning extensions).

`TracedGroups` gives structured pruners the coupled channel groups of a traced model, `thin()`
removes what the masks zeroed, and `apply_recipe()` replays a saved recipe on a dense model.
"""
from .extension import ChannelRemover, FilterRemover
from .graph import Analysis, ThinningError, TracedGroups, analyse
from .stats import count_macs, count_params
from .thin import LayerEdit, ThinningStep, apply_recipe, plan, select_classes, thin

__all__ = ["Analysis", "ChannelRemover", "FilterRemover", "LayerEdit", "ThinningError", "ThinningStep",
           "TracedGroups", "analyse", "apply_recipe", "count_macs", "count_params", "plan", "select_classes",
           "thin"]
