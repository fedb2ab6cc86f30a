"""Thinning: physically removing pruned filters and channels (registers the thinning extensions).

`TracedGroups` gives structured pruners the coupled channel groups of a traced model, `thin()`
removes what the masks zeroed, and `apply_recipe()` replays a saved recipe on a dense model.
"""
from .extension import ChannelRemover, FilterRemover, StructureRemover
from .graph import Analysis, ThinningError, TracedGroups, analyse, check_traceable
from .inputs import DATASET_SHAPES
from .stats import count_macs, count_params
from .thin import LayerEdit, ThinningStep, apply_recipe, plan, select_classes, thin

__all__ = ["DATASET_SHAPES", "Analysis", "ChannelRemover", "FilterRemover", "LayerEdit", "StructureRemover",
           "ThinningError", "ThinningStep", "TracedGroups", "analyse", "apply_recipe", "check_traceable", "count_macs",
           "count_params", "plan", "select_classes", "thin"]
