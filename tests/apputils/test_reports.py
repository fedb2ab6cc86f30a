"""write_reports: the five files, the one-screen summary, and failures reported together."""
from __future__ import annotations

import shutil

import openpyxl
import pytest
import torch

from apps.sr.models import C2SRCNN
from apputils import reports
from apputils.reports import ReportError, format_summary, write_reports
from apputils.sensitivity import Evaluation


def evaluation() -> Evaluation:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(1, 1, 16, 16, generator=g), torch.rand(1, 1, 16, 16, generator=g)) for _ in range(2)]

    def metrics(out: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
        mse = float(((out.clamp(0, 1) - hr) ** 2).mean())
        return {"psnr": -10.0 * torch.log10(torch.tensor(mse)).item(), "loss": mse}

    return Evaluation(batches, metrics)


def model() -> C2SRCNN:
    net = C2SRCNN(d=8, s=4, m=1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)  # make pruning visible in the metrics
        net.mid_part[1].weight[:2] = 0.0
    return net


def test_all_files_and_summary(tmp_path):
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    summary = write_reports(net, evaluation(), torch.zeros(1, 1, 16, 16), tmp_path / "reports",
                            sparsities=[0.0, 0.5, 0.9], progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    out = tmp_path / "reports"
    drawing = "arch.png" if shutil.which("dot") else "arch.dot"
    for name in ("sense_file.xlsx", "sense_file.csv", "spars_file.xlsx", "macs_file.xlsx", drawing, "model.onnx"):
        assert (out / name).is_file(), name
    assert summary["files"]["drawing"] == str(out / drawing)
    assert set(summary["metrics"]) == {"psnr", "loss"}
    assert summary["params"] == sum(p.numel() for p in net.parameters())
    assert summary["nonzero_params"] == summary["params"] - 2 * 4 * 9
    assert summary["macs"] == 16 * 16 * (8 * 25 + 4 * 8 + 4 * 4 * 9 + 8 * 4 + 8 * 25)
    assert summary["effective_macs"] == summary["macs"] - 16 * 16 * 2 * 4 * 9
    assert summary["weight_sparsity_%"] > 0
    assert summary["errors"] == {}
    assert set(summary["suggested"]) == {n for n, p in net.named_parameters() if p.dim() >= 2}
    assert openpyxl.load_workbook(out / "sense_file.xlsx").sheetnames == ["psnr", "loss", "long", "about"]
    text = summary["summary"]
    assert text == format_summary(summary)
    assert f"psnr: {summary['metrics']['psnr']:.4f}" in text
    assert f"params: {summary['params']:,}" in text
    assert "MACs per sample of (1, 1, 16, 16)" in text
    assert str(out / "macs_file.xlsx") in text
    assert len(text.splitlines()) < 40


def test_a_failing_tool_does_not_stop_the_others(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no drawing today")

    monkeypatch.setattr(reports, "draw_model_to_file", broken)
    with pytest.raises(ReportError, match="arch.png: RuntimeError: no drawing today") as info:
        write_reports(model(), evaluation(), torch.zeros(1, 1, 16, 16), tmp_path, sparsities=[0.0, 0.5],
                      progress=False)
    assert (tmp_path / "macs_file.xlsx").is_file() and (tmp_path / "model.onnx").is_file()
    assert "drawing" not in info.value.summary["files"]
    assert "FAILED arch.png" in format_summary(info.value.summary)


def test_bad_sense_type(tmp_path):
    with pytest.raises(ReportError, match="--sense_type 'rows' is not supported"):
        write_reports(model(), evaluation(), torch.zeros(1, 1, 16, 16), tmp_path, sense_type="rows")


def test_plain_test_func(tmp_path):
    ev = evaluation()
    summary = write_reports(model(), lambda m: ev(m), torch.zeros(1, 1, 16, 16), tmp_path, sense_type="filter",
                            sparsities=[0.0, 0.5], progress=False)
    assert summary["sense_type"] == "filter" and summary["errors"] == {}
