"""MACs: exact counts against hand-computed formulas, effective MACs, and the workbook."""
from __future__ import annotations

import openpyxl
import pytest
import torch
from torch import nn

from apps.sr.models import C2SRCNN, FSRCNN
from apputils.macs import macs_table, model_macs
from apputils.platform_summaries import macs_display
from compress.thinning import count_macs


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)       # 16x16 -> 8x8
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)          # depthwise
        self.gconv = nn.Conv2d(8, 16, 1, groups=4)                 # grouped pointwise
        self.up = nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1)  # 8x8 -> 16x16
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.gconv(self.dw(self.conv(x))))
        rows = y.mean(dim=3).transpose(1, 2)  # (N, 16 rows, 4 features)
        return self.fc(rows)


# Hand-computed for input 1x3x16x16:
EXPECTED_MIXED = {
    "conv": 8 * 8 * 8 * (3 * 3 * 3),        # Hout*Wout*Cout * Cin*k*k             = 13824
    "dw": 8 * 8 * 8 * (1 * 3 * 3),          # depthwise: Cin/groups = 1            = 4608
    "gconv": 8 * 8 * 16 * (8 // 4),         # groups=4: each output sees 2 inputs  = 2048
    "up": 8 * 8 * 16 * (4 * 4 * 4),         # transposed: Hin*Win*Cin * Cout*k*k   = 65536
    "fc": 16 * 4 * 10,                      # 16 rows * in * out                   = 640
}


def test_exact_macs_conv_depthwise_grouped_transposed_linear():
    df = macs_table(Mixed(), torch.zeros(1, 3, 16, 16))
    layers = df[df["name"] != "Total"].set_index("name")
    assert layers["macs"].to_dict() == EXPECTED_MIXED
    assert layers["effective_macs"].to_dict() == EXPECTED_MIXED  # dense weights: all non-zero
    total = df[df["name"] == "Total"].iloc[0]
    assert total["macs"] == sum(EXPECTED_MIXED.values())
    assert layers.loc["up", "input_shape"] == "1x16x8x8" and layers.loc["up", "output_shape"] == "1x4x16x16"
    assert layers.loc["dw", "attributes"] == "k=3x3 s=1x1 p=1x1 d=1x1 groups=8"
    assert layers.loc["conv", "output_volume"] == 8 * 8 * 8
    assert layers.loc["up", "weight_volume"] == 16 * 4 * 4 * 4
    assert layers["share_%"].sum() == pytest.approx(100.0)
    assert layers.loc["up", "share_%"] == pytest.approx(100.0 * 65536 / sum(EXPECTED_MIXED.values()))


def test_counted_per_sample_like_the_core():
    model = Mixed()
    one = model_macs(model, torch.zeros(1, 3, 16, 16))
    assert model_macs(model, torch.zeros(3, 3, 16, 16)) == one
    assert one[0] == count_macs(model, torch.zeros(2, 3, 16, 16))
    assert macs_table(model, torch.zeros(3, 3, 16, 16)).set_index("name").loc["up", "input_volume"] == 16 * 8 * 8


def test_effective_macs_count_non_zero_weights():
    model = Mixed()
    with torch.no_grad():
        model.gconv.weight.view(-1)[::2] = 0.0           # 16 of 32 weights
        model.up.weight[:, :2] = 0.0                      # half of the transposed conv's weights
    df = macs_table(model, torch.zeros(1, 3, 16, 16)).set_index("name")
    assert df.loc["gconv", "effective_macs"] == 8 * 8 * 16
    assert df.loc["up", "effective_macs"] == 8 * 8 * (16 * 2 * 4 * 4)
    assert df.loc["gconv", "macs"] == EXPECTED_MIXED["gconv"]
    assert df.loc["gconv", "weight_sparsity_%"] == pytest.approx(50.0)


def test_c2srcnn_by_formula():
    h = w = 32
    expected = {"first_part.0": h * w * 56 * 1 * 5 * 5, "mid_part.0.0": h * w * 12 * 56,
                **{f"mid_part.{i}": h * w * 12 * 12 * 3 * 3 for i in (1, 3, 5, 7)},
                "mid_part.9.0": h * w * 56 * 12, "last_part": h * w * 1 * 56 * 5 * 5}
    df = macs_table(C2SRCNN(), torch.zeros(1, 1, h, w))
    assert df[df["name"] != "Total"].set_index("name")["macs"].to_dict() == expected
    assert df.iloc[-1]["macs"] == 9_551_872 == sum(expected.values())


def test_fsrcnn_transposed_last_layer():
    model = FSRCNN(upscale_factor=2)
    df = macs_table(model, torch.zeros(1, 1, 16, 16)).set_index("name")
    assert df.loc["last_part", "macs"] == 16 * 16 * 56 * 1 * 9 * 9
    assert df.loc["Total", "macs"] == count_macs(model, torch.zeros(1, 1, 16, 16))
    assert df.loc["last_part", "output_shape"] == "1x1x32x32"


def test_model_left_as_it_was():
    model = Mixed().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    macs_table(model, torch.zeros(1, 3, 16, 16))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_macs_workbook(tmp_path):
    path = tmp_path / "macs_file.xlsx"
    df = macs_display(Mixed(), path, torch.zeros(1, 3, 16, 16))
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["macs", "about"]
    ws = wb["macs"]
    header = [c.value for c in ws[1]]
    for col in ("name", "type", "attributes", "input_shape", "output_shape", "input_volume", "output_volume",
                "weight_volume", "macs", "effective_macs", "share_%"):
        assert col in header
    names = [ws.cell(r, 1).value for r in range(2, ws.max_row + 1)]
    assert names == ["conv", "dw", "gconv", "up", "fc", "Total"]
    assert ws.cell(ws.max_row, header.index("macs") + 1).value == sum(EXPECTED_MIXED.values())
    assert len(ws._charts) == 1 and type(ws._charts[0]).__name__ == "BarChart"
    assert len(ws._charts[0].series) == 2  # dense and effective
    assert len(df) == 6
    about = dict(wb["about"].iter_rows(values_only=True))
    assert about["dummy_input"] == "(1, 3, 16, 16)"
