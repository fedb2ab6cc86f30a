"""Pruning sensitivity: how each metric moves when one weight alone is pruned to each level.

Every prunable weight (2 or more dimensions) is pruned to each sparsity level in turn — by element
magnitude, by L1-ranked filters or by L1-ranked input channels (with the whole coupled channel group)
— the model is evaluated, and the weight is restored in place. Nothing is deep-copied and the model is
bit-identical when the function returns, also when the evaluation raises.

Two forms of `test_func` are accepted:

* any callable `test_func(model) -> {'psnr': .., 'ssim': .., ...}`: the whole test runs per step;
* an `Evaluation(loader, metrics)`: the tool drives the loader itself and, when the model traces with
  torch.fx, runs the layers before the pruned one only once per weight. The activations that cross
  the pruned layer's position (its input, plus any skip tensors a branchy network keeps alive) are
  cached per batch, and each level re-runs only the layers from the pruned one to the output, in
  channels-last memory format when the model's convolutions allow it (faster CPU kernels), with
  narrow-output convolutions (an image network's output layer) run as a matrix product plus shifted
  sums where that is measured faster (apputils.conv_taps).

A level that leaves a weight unchanged (level 0, or a level at or below the weight's existing
sparsity) is not re-evaluated: the baseline metrics are reused, since the model is the same.

Modules, one job each: `evaluation` (the Evaluation API), `steps` (what one step prunes),
`partial_run` (running a torch.fx trace from any node), `tuning` (CPU memory format and kernels for
those runs), `evaluators` (the whole test per step, or the cached layers), `analysis` (the loop and
its checks), `suggest` (reading the results).
"""
from __future__ import annotations

from .analysis import DEFAULT_SPARSITIES, sensitivity_analysis
from .evaluation import Evaluation, Metrics, pair
from .evaluators import STACK_CHANNELS
from .steps import SENSE_TYPES, SenseType, prunable_weights, pruned_tensors
from .suggest import suggest_levels
from .tuning import MEMORY_FORMATS, MemoryFormat, best_times, choose_kernels, choose_memory_format

__all__ = ["DEFAULT_SPARSITIES", "MEMORY_FORMATS", "SENSE_TYPES", "STACK_CHANNELS", "Evaluation", "MemoryFormat",
           "Metrics", "SenseType", "best_times", "choose_kernels", "choose_memory_format", "pair",
           "prunable_weights", "pruned_tensors", "sensitivity_analysis", "suggest_levels"]
