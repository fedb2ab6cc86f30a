"""Excel workbooks for the report tools: tables written with pandas + openpyxl, with openpyxl charts.

Each workbook is written to a temporary file next to its destination and moved into place, so a
crash never leaves half a workbook where a previous good one was.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from openpyxl.chart import BarChart, LineChart, Reference
from openpyxl.utils import get_column_letter
from openpyxl.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet

LONG_SHEET = "long"
ABOUT_SHEET = "about"
_BAD_SHEET_CHARS = re.compile(r"[\[\]:*?/\\]")


def sheet_name(metric: str, taken: set[str]) -> str:
    """A valid, unique Excel sheet name (31 chars, no []:*?/\\) for a metric."""
    base = _BAD_SHEET_CHARS.sub("_", metric)[:31] or "metric"
    name, i = base, 2
    while name.lower() in {t.lower() for t in taken}:
        suffix = f"_{i}"
        name, i = base[:31 - len(suffix)] + suffix, i + 1
    return name


def save_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` then move the file to `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _check_xlsx(path: Path) -> None:
    if path.suffix.lower() != ".xlsx":
        raise ValueError(f"'{path}': report workbooks are .xlsx files; give a file name ending in .xlsx")


def _autofit(ws: Worksheet, max_width: int = 48) -> None:
    for col in ws.columns:
        width = max((len(str(c.value)) for c in col if c.value is not None), default=8)
        ws.column_dimensions[get_column_letter(col[0].column)].width = min(max(width + 2, 8), max_width)


def _about(book: Workbook, items: Sequence[tuple[str, object]]) -> None:
    ws = book.create_sheet(ABOUT_SHEET)
    for key, value in items:
        ws.append([key, str(value)])
    _autofit(ws, 100)


def write_sensitivity_workbook(df: pd.DataFrame, path: str | Path, metrics: Sequence[str],
                               sense_type: str, notes: Sequence[tuple[str, object]] = ()) -> Path:
    """One sheet per metric (rows = weights, columns = levels) with a line chart; a long sheet; a CSV.

    `notes` are extra (key, value) rows for the 'about' sheet (e.g. weights that were skipped).
    """
    path = Path(path)
    _check_xlsx(path)

    def write(tmp: Path) -> None:
        taken = {LONG_SHEET, ABOUT_SHEET}
        with pd.ExcelWriter(tmp, engine="openpyxl") as writer:
            for metric in metrics:
                name = sheet_name(metric, taken)
                taken.add(name)
                wide = df.pivot(index="parameter", columns="sparsity", values=metric)
                wide = wide.loc[list(dict.fromkeys(df["parameter"]))]  # keep the model's order
                wide.columns = [float(c) for c in wide.columns]
                wide.to_excel(writer, sheet_name=name, index_label="parameter")
                ws = writer.sheets[name]
                _autofit(ws)
                chart = LineChart()
                chart.title = f"{metric} vs {sense_type} sparsity"
                chart.y_axis.title = metric
                chart.x_axis.title = "sparsity"
                chart.height, chart.width = 10, 20
                n_rows, n_cols = wide.shape
                data = Reference(ws, min_col=1, max_col=n_cols + 1, min_row=2, max_row=n_rows + 1)
                chart.add_data(data, from_rows=True, titles_from_data=True)
                chart.set_categories(Reference(ws, min_col=2, max_col=n_cols + 1, min_row=1, max_row=1))
                ws.add_chart(chart, f"{get_column_letter(n_cols + 3)}2")
            df.to_excel(writer, sheet_name=LONG_SHEET, index=False)
            _autofit(writer.sheets[LONG_SHEET])
            _about(writer.book, [("tool", "sensitivity_analysis"), ("sense_type", sense_type),
                                 ("metrics", ", ".join(metrics)),
                                 ("levels", ", ".join(f"{s:g}" for s in sorted(df["sparsity"].unique()))),
                                 *notes])

    save_atomic(path, write)
    save_atomic(path.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))
    return path


def write_table_with_bar_chart(df: pd.DataFrame, path: str | Path, sheet: str, label_col: str,
                               value_cols: Sequence[str], title: str, y_title: str,
                               about: Sequence[tuple[str, object]], chart_rows: int | None = None) -> Path:
    """`df` on one sheet, and a clustered bar chart of `value_cols` over the first `chart_rows` rows."""
    path = Path(path)
    _check_xlsx(path)

    def write(tmp: Path) -> None:
        with pd.ExcelWriter(tmp, engine="openpyxl") as writer:
            df.to_excel(writer, sheet_name=sheet, index=False)
            ws = writer.sheets[sheet]
            _autofit(ws)
            n = len(df) if chart_rows is None else chart_rows
            if n > 0:
                chart = BarChart()
                chart.type = "col"
                chart.title = title
                chart.y_axis.title = y_title
                chart.height, chart.width = 10, max(16, min(40, 2 + n * len(value_cols) * 0.8))
                for col in value_cols:
                    idx = list(df.columns).index(col) + 1
                    chart.add_data(Reference(ws, min_col=idx, min_row=1, max_row=n + 1), titles_from_data=True)
                label_idx = list(df.columns).index(label_col) + 1
                chart.set_categories(Reference(ws, min_col=label_idx, min_row=2, max_row=n + 1))
                ws.add_chart(chart, f"{get_column_letter(len(df.columns) + 2)}2")
            _about(writer.book, about)

    return save_atomic(path, write)
