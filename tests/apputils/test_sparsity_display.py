"""sparsity_display: the core's sparsity summary as a workbook with a bar chart."""
from __future__ import annotations

import openpyxl
import pytest
import torch
from torch import nn

from apputils.platform_summaries import sparsity_display
from compress.summary import COLUMNS


def pruned_net() -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight[:2] = 0.0                 # 2 of 4 filters
        net[2].weight[:, :1] = 0.0              # 1 of 4 input channels
        net[4].weight.view(-1)[:3] = 0.0        # 3 of 12 elements
    return net


def test_workbook_table_and_chart(tmp_path):
    path = tmp_path / "spars_file.xlsx"
    df = sparsity_display(pruned_net(), path)
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["sparsity", "about"]
    ws = wb["sparsity"]
    assert [c.value for c in ws[1]] == COLUMNS
    rows = {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in ws.iter_rows(min_row=2, values_only=True)}
    assert list(rows) == ["0.weight", "2.weight", "4.weight", "Total"]
    assert rows["0.weight"]["Fine (%)"] == pytest.approx(50.0)
    assert rows["0.weight"]["Filters/3D (%)"] == pytest.approx(50.0)
    assert rows["2.weight"]["Channels (%)"] == pytest.approx(25.0)
    assert rows["4.weight"]["NNZ (sparse)"] == 9
    dense = 4 * 2 * 9 + 4 * 4 + 12
    sparse = 36 + 12 + 9
    assert rows["Total"]["NNZ (dense)"] == dense and rows["Total"]["NNZ (sparse)"] == sparse
    assert rows["Total"]["Fine (%)"] == pytest.approx(100.0 * (1 - sparse / dense))
    charts = ws._charts
    assert len(charts) == 1 and type(charts[0]).__name__ == "BarChart"
    assert len(charts[0].series) == 3  # fine, filters, channels
    # the chart covers the layers, not the Total row
    ref = charts[0].series[0].val.numRef.f
    assert ref.endswith("$4"), ref
    assert df.iloc[-1]["Name"] == "Total"


def test_model_untouched(tmp_path):
    net = pruned_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sparsity_display(net, tmp_path / "s.xlsx")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="xlsx"):
        sparsity_display(pruned_net(), tmp_path / "s.csv")
