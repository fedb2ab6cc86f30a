"""The five report tools under the names the project has always given them (one call each, a file out).

    draw_model_to_file(model, 'arch.png', torch.zeros(1, 1, 32, 32))
    sensitivity_analysis(model, 'sense_file.xlsx', test_func, 'element')   # or 'filter' / 'channel'
    sparsity_display(model, 'spars_file.xlsx')
    macs_display(model, 'macs_file.xlsx', torch.zeros(1, 1, 32, 32))
    transform_to_onnx(model, 'model.onnx', torch.zeros(1, 1, 32, 32), quantize_flag)

Each lives in its own module (sensitivity, macs, drawing, onnx_export); this one adds the workbook
writers for sparsity and MACs and keeps the original import path working.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from compress import sparsity_summary

from .drawing import draw_model_to_file
from .macs import macs_table, write_macs_workbook
from .onnx_export import transform_to_onnx
from .sensitivity import Evaluation, sensitivity_analysis
from .workbooks import write_table_with_bar_chart

__all__ = ["Evaluation", "draw_model_to_file", "macs_display", "sensitivity_analysis", "sparsity_display",
           "transform_to_onnx"]


def sparsity_display(model: nn.Module, sparsity_file: str | Path) -> pd.DataFrame:
    """Write the core's sparsity summary (one row per weight, and a Total row) with a bar chart.

    The chart shows, per weight, the percent of zero elements (fine), of all-zero filters and of
    all-zero input channels. Returns the table.
    """
    df = sparsity_summary(model)
    write_table_with_bar_chart(
        df, sparsity_file, "sparsity", "Name", ["Fine (%)", "Filters/3D (%)", "Channels (%)"],
        "Sparsity per weight", "% zero", [
            ("tool", "sparsity_display"),
            ("Fine (%)", "zero elements"),
            ("Filters/3D (%)", "filters (output channels) whose weights are all zero"),
            ("Channels (%)", "input channels whose weights are all zero in every filter"),
            ("Rows (%) / Cols (%)", "all-zero kernel rows / columns (2-D weights: rows = outputs)")],
        chart_rows=len(df) - 1)
    return df


def macs_display(model: nn.Module, macs_file: str | Path,
                 dummy_input: torch.Tensor | Sequence[torch.Tensor]) -> pd.DataFrame:
    """Write per-layer MACs (dense and effective) for `dummy_input`, with a bar chart; return the table."""
    df = macs_table(model, dummy_input)
    shape = (" ".join(str(tuple(t.shape)) for t in dummy_input) if isinstance(dummy_input, (tuple, list))
             else str(tuple(dummy_input.shape)))
    write_macs_workbook(df, macs_file, shape)
    return df
