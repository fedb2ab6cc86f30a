"""Huge pages for PyTorch's CPU allocations: set only when the user did not choose and the kernel can."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apputils.huge_pages import VARIABLE, prefer_huge_pages


@pytest.mark.parametrize("mode, expected", [("always [madvise] never\n", True), ("[always] madvise never\n", True),
                                            ("always madvise [never]\n", False)])
def test_follows_the_kernels_mode_in_a_fresh_process(tmp_path, mode, expected):
    mode_file = tmp_path / "enabled"
    mode_file.write_text(mode)
    code = ("import os, sys; from pathlib import Path; from apputils.huge_pages import prefer_huge_pages; "
            f"on = prefer_huge_pages(Path({str(mode_file)!r})); "
            f"print(on, os.environ.get({VARIABLE!r}), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    assert out.split() == ([str(expected), "1" if expected else "None", "False"])


def test_the_users_choice_wins(monkeypatch, tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("[always] madvise never\n")
    monkeypatch.setenv(VARIABLE, "0")
    assert prefer_huge_pages(mode_file) is False
    monkeypatch.setenv(VARIABLE, "1")
    assert prefer_huge_pages(mode_file) is True


def test_too_late_once_torch_is_imported(monkeypatch, tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("[always] madvise never\n")
    monkeypatch.delenv(VARIABLE, raising=False)
    import torch  # noqa: F401 - the test process has torch already; this makes it explicit

    assert prefer_huge_pages(mode_file) is False
    assert VARIABLE not in os.environ


def test_no_setting_without_the_kernels_file(monkeypatch, tmp_path):
    monkeypatch.delenv(VARIABLE, raising=False)
    assert prefer_huge_pages(tmp_path / "missing") is False
