"""The app registry train.py / test.py dispatch through."""
import pytest

import apps
from apps import available_apps, get_app, optform, register_app
from apputils.execution_env import UserError


def test_sr_is_registered_with_everything_an_app_needs():
    app = get_app("SR")
    assert "SR" in available_apps()
    for attr in ("TrainOptions", "TestOptions", "Trainer", "Tester", "build_train_loaders", "build_test_loader"):
        assert hasattr(app, attr)


def test_unknown_app_lists_the_valid_ones():
    with pytest.raises(UserError, match="valid apps: .*SR"):
        get_app("Colorize")
    with pytest.raises(UserError, match="did you mean --optform=SR"):
        get_app("sr")


def test_incomplete_app_is_refused(monkeypatch):
    monkeypatch.setitem(apps._APPS, "Broken", "apps.sr.metrics")
    with pytest.raises(UserError, match="lacks"):
        get_app("Broken")


def test_register_twice_under_another_module_is_refused(monkeypatch):
    monkeypatch.setitem(apps._APPS, "X", "apps.sr")
    register_app("X", "apps.sr")  # same module again: fine
    with pytest.raises(KeyError):
        register_app("X", "apps.other")


def test_optform_must_come_first():
    assert optform(["--optform=SR", "--lr", "1"]) == "SR"
    assert optform(["--optform", "SR"]) == "SR"
    with pytest.raises(UserError, match="first argument"):
        optform(["--lr", "1", "--optform=SR"])
    with pytest.raises(UserError, match="no arguments"):
        optform([])
