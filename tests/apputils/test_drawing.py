"""draw_model_to_file: PNG through Graphviz, and the .dot fallback where `dot` is missing."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch
from torch import nn

from apps.sr.models import C2SRCNN
from apputils.drawing import model_to_dot
from apputils.platform_summaries import draw_model_to_file


class Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return torch.cat([y, self.b(y)], dim=1)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1)
        self.b = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace this
            y = self.b(y)
        return y


def test_dot_source_has_names_shapes_sparsity_and_edges():
    model = C2SRCNN()
    with torch.no_grad():
        model.mid_part[1].weight[:6] = 0.0
    src = model_to_dot(model, torch.zeros(1, 1, 16, 16))
    assert "mid_part.1\\nConv2d\\n12->12 k=3x3 s=1x1" in src
    assert "sparsity 50.0%" in src
    assert "out 1x56x16x16" in src
    assert src.count("->") >= 17  # the chain plus the global residual into the add
    assert "add" in src


def test_branches_are_joined():
    src = model_to_dot(Skip(), torch.zeros(1, 1, 8, 8))
    assert "groups=4" in src and "cat" in src
    assert "a -> cat" in src and "b -> cat" in src


def test_untraceable_model_drawn_in_execution_order(caplog):
    with caplog.at_level(logging.INFO, logger="apputils.drawing"):
        src = model_to_dot(Untraceable(), torch.zeros(1, 1, 4, 4))
    assert "execution order" in src and "n0 -> n1" in src
    assert "could not trace" in caplog.text


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' not installed (apt-get install graphviz)")
def test_png_with_graphviz(tmp_path):
    out = draw_model_to_file(C2SRCNN(), tmp_path / "arch.png", torch.zeros(1, 1, 16, 16))
    assert out == tmp_path / "arch.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5000
    assert not (tmp_path / "arch.dot").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["arch.png"]  # no temporary files left


def test_dot_fallback_without_graphviz(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # hide `dot`
    with caplog.at_level(logging.WARNING, logger="apputils.drawing"):
        out = draw_model_to_file(C2SRCNN(), tmp_path / "arch.png", torch.zeros(1, 1, 16, 16))
    assert out == tmp_path / "arch.dot"
    assert out.read_text().startswith("digraph model {")
    assert not (tmp_path / "arch.png").exists()
    assert "apt-get install graphviz" in caplog.text
    assert f"dot -Tpng '{out}' -o '{tmp_path / 'arch.png'}'" in caplog.text


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        draw_model_to_file(Skip(), tmp_path / "arch.jpgx", torch.zeros(1, 1, 8, 8))


def test_model_untouched():
    model = Skip().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model_to_dot(model, torch.zeros(1, 1, 8, 8))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
