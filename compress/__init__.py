"""compress: YAML-scheduled pruning, regularization, quantization and thinning for any PyTorch training loop.

    import compress
    scheduler = compress.file_config(model, optimizer, "schedules/examples/agp_prune.yaml")

then call the scheduler's hooks in your loop (see README and DESIGN.md §2).
"""
from . import lr_schedulers, pruning, quantization, regularization, thinning  # noqa: F401  (register classes)
from .config import dict_config, file_config
from .errors import ScheduleError
from .masks import MaskStore
from .policy import Component, Context, Step, Timing
from .registry import EXTENSIONS, LR_SCHEDULERS, PRUNERS, QUANTIZERS, REGULARIZERS, Registry
from .scheduler import CompressionScheduler
from .summary import model_sparsity, sparsity_summary

__all__ = ["EXTENSIONS", "LR_SCHEDULERS", "PRUNERS", "QUANTIZERS", "REGULARIZERS", "Component",
           "CompressionScheduler", "Context", "MaskStore", "Registry", "ScheduleError", "Step", "Timing",
           "dict_config", "file_config", "model_sparsity", "sparsity_summary"]
