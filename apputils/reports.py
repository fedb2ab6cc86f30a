"""The reports bundle of `test.py --reports`: five files and a one-screen summary.

`write_reports(model, test_func, dummy_input, out_dir)` writes into `out_dir`:
sense_file.xlsx (+ .csv), spars_file.xlsx, macs_file.xlsx, arch.png (arch.dot where Graphviz is not
installed) and model.onnx, and returns a summary dict; its `summary` entry is the one-screen text (`format_summary`).
A tool that fails does not stop the others; the failures are collected and raised together at the
end as one ReportError, which carries the summary of what was written.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from compress import sparsity_summary
from compress.modules import nonzero_parameters

from . import distributed
from .execution_env import UserError
from .macs import model_macs
from .platform_summaries import (
    draw_model_to_file,
    macs_display,
    sensitivity_analysis,
    sparsity_display,
    transform_to_onnx,
)
from .sensitivity import SENSE_TYPES, Evaluation, suggest_levels

log = logging.getLogger(__name__)

FILES = {"sensitivity": "sense_file.xlsx", "sparsity": "spars_file.xlsx", "macs": "macs_file.xlsx",
         "drawing": "arch.png", "onnx": "model.onnx"}


class ReportError(UserError):
    """One or more report tools failed; `summary` holds what was written."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def _shape(dummy_input: torch.Tensor | Sequence[torch.Tensor]) -> str:
    if isinstance(dummy_input, (tuple, list)):
        return ", ".join(str(tuple(t.shape)) for t in dummy_input)
    return str(tuple(dummy_input.shape))


def write_reports(model: nn.Module, test_func: Callable[[nn.Module], Mapping[str, float]] | Evaluation,
                  dummy_input: torch.Tensor | Sequence[torch.Tensor], out_dir: str | Path,
                  sense_type: str = "element", *, quantize_flag: bool = False,
                  sparsities: Sequence[float] | None = None, tolerance: float = 0.1,
                  progress: bool = True) -> dict[str, Any]:
    """Test the model, write the five report files into `out_dir`, return the summary.

    `test_func` is a test_func(model) -> {'psnr': .., ...} or an apputils.sensitivity.Evaluation
    (faster sensitivity analysis). `tolerance` is the drop of the first metric (dB for PSNR) the
    suggested per-layer sparsity may cost. Raises ReportError after writing what it could when a
    tool failed. The model is left unchanged. Under torchrun rank 0 writes everything and the other ranks
    only take their share of the sensitivity analysis (they return {}).
    """
    if sense_type not in SENSE_TYPES:
        raise ReportError(f"--sense_type {sense_type!r} is not supported: use one of {', '.join(SENSE_TYPES)}",
                          {})
    if not distributed.is_main():
        try:
            sensitivity_analysis(model, None, test_func, sense_type, sparsities, dummy_input=dummy_input,
                                 progress=False)
        except Exception:  # noqa: BLE001 - rank 0 meets the same failure and reports it
            log.debug("reports: sensitivity failed on this rank", exc_info=True)
        return {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    files: dict[str, str] = {}

    t0 = time.perf_counter()
    metrics = dict(test_func(model))
    seconds["test"] = time.perf_counter() - t0

    nonzero = nonzero_parameters(model)
    params = sum(p.numel() for p in model.parameters())
    sparsity = float(sparsity_summary(model)["Fine (%)"].iloc[-1])
    summary: dict[str, Any] = {
        "metrics": metrics, "params": params, "nonzero_params": nonzero, "weight_sparsity_%": sparsity,
        "dummy_input": _shape(dummy_input), "sense_type": sense_type, "files": files,
        "errors": errors, "seconds": seconds, "suggested": {}, "tolerance": tolerance}
    try:
        dense, effective = model_macs(model, dummy_input)
        summary.update(macs=dense, effective_macs=effective)
    except Exception as err:  # noqa: BLE001 - reported with the other failures below
        errors["macs"] = f"{type(err).__name__}: {err}"

    def step(key: str, run: Callable[[Path], Path | pd.DataFrame | None]) -> Any:
        target = out / FILES[key]
        log.info("reports: writing %s", target)
        t = time.perf_counter()
        try:
            result = run(target)
        except Exception as err:  # noqa: BLE001 - one failing tool must not stop the others
            log.debug("reports: %s failed", key, exc_info=True)
            errors[key] = f"{type(err).__name__}: {err}"
            return None
        finally:
            seconds[key] = time.perf_counter() - t
        files[key] = str(result if isinstance(result, Path) else target)
        return result

    sense = step("sensitivity", lambda p: sensitivity_analysis(model, p, test_func, sense_type, sparsities,
                                                               dummy_input=dummy_input, progress=progress))
    if isinstance(sense, pd.DataFrame) and "sensitivity" in files:
        files["sensitivity_csv"] = str(Path(files["sensitivity"]).with_suffix(".csv"))
        metric = _headline_metric(sense)
        if metric is not None:
            summary["suggested_metric"] = metric
            summary["suggested"] = suggest_levels(sense, metric, tolerance, higher_is_better=_higher_is_better(metric))
    step("sparsity", lambda p: sparsity_display(model, p))
    step("macs", lambda p: macs_display(model, p, dummy_input))
    step("drawing", lambda p: draw_model_to_file(model, p, dummy_input))
    step("onnx", lambda p: _onnx(model, p, dummy_input, quantize_flag))
    summary["summary"] = format_summary(summary)
    if errors:
        lines = "; ".join(f"{FILES.get(k, k)}: {v}" for k, v in errors.items())
        raise ReportError(f"some reports could not be written into {out}: {lines}", summary)
    return summary


def _onnx(model: nn.Module, path: Path, dummy_input: Any, quantize_flag: bool) -> Path:
    transform_to_onnx(model, str(path), dummy_input, quantize_flag)
    return path


def _headline_metric(df: pd.DataFrame) -> str | None:
    metrics = [c for c in df.columns if c not in ("parameter", "sparsity", "actual_sparsity")]
    for preferred in ("psnr", "PSNR"):
        if preferred in metrics:
            return preferred
    return metrics[0] if metrics else None


def _higher_is_better(metric: str) -> bool:
    lowered = metric.lower()
    return not any(word in lowered for word in ("loss", "mse", "mae", "error", "lpips", "dist"))


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a short block of text for the console."""
    lines = ["=" * 72, "Test and reports"]
    metrics = summary.get("metrics", {})
    if metrics:
        lines.append("  " + "   ".join(f"{k}: {v:.4f}" for k, v in metrics.items()
                                        if isinstance(v, (int, float)) and not math.isnan(v)))
    if "params" in summary:
        lines.append(f"  params: {summary['params']:,} ({summary['nonzero_params']:,} non-zero)   "
                     f"weight sparsity: {summary['weight_sparsity_%']:.1f}%")
    if "macs" in summary:
        lines.append(f"  MACs per sample of {summary['dummy_input']}: {_human(summary['macs'])} dense, "
                     f"{_human(summary['effective_macs'])} effective (non-zero weights)")
    suggested = summary.get("suggested") or {}
    if suggested:
        metric = summary.get("suggested_metric", "")
        lines.append(f"  highest tested {summary.get('sense_type', '')} sparsity per weight costing at most "
                     f"{summary.get('tolerance')} {metric}:")
        for name, level in suggested.items():
            lines.append(f"    {name:<40} {level:.0%}")
    files = summary.get("files", {})
    if files:
        lines.append("  files:")
        for key, path in files.items():
            lines.append(f"    {key:<16} {path}")
    errors = summary.get("errors", {})
    for key, msg in errors.items():
        lines.append(f"  FAILED {FILES.get(key, key)}: {msg}")
    lines.append("=" * 72)
    return "\n".join(lines)
