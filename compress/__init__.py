"""compress: YAML-scheduled pruning, regularization, quantization, thinning and distillation for any PyTorch loop.

    import compress
    scheduler = compress.file_config(model, optimizer, "schedules/examples/agp_prune.yaml")

then call the scheduler's hooks in your loop (see docs/own-loop.md).
"""
from . import distillation, lr_schedulers, pruning, quantization, regularization, thinning  # noqa: F401  (register classes)
from .config import dict_config, file_config
from .distillation import KnowledgeDistillation
from .errors import ScheduleError
from .masks import MaskStore
from .policy import Component, Context, Step, Timing
from .registry import DISTILLERS, EXTENSIONS, LR_SCHEDULERS, PRUNERS, QUANTIZERS, REGULARIZERS, Registry
from .scheduler import CompressionScheduler
from .summary import model_sparsity, sparsity_summary

__all__ = ["DISTILLERS", "EXTENSIONS", "LR_SCHEDULERS", "PRUNERS", "QUANTIZERS", "REGULARIZERS", "Component",
           "CompressionScheduler", "Context", "KnowledgeDistillation", "MaskStore", "Registry", "ScheduleError",
           "Step", "Timing", "dict_config", "file_config", "model_sparsity", "sparsity_summary"]
