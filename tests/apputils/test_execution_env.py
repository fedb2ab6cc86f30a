"""Run environment: log file + console, TensorBoard folder, env info, and the entry-point error wrapper."""
import logging

import pytest

from apputils.execution_env import FILE_ONLY, UserError, env_info, run_entry, setup_run


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for h in list(root.handlers):
        if h not in before:
            root.removeHandler(h)


def test_setup_run_writes_log_and_tensorboard(tmp_path, clean_root, capsys):
    env = setup_run("r1", tmp_path / "logs")
    log = logging.getLogger("tests.env")
    log.info("to both")
    log.info("file only line", extra=FILE_ONLY)
    env.writer.add_scalar("x", 1.0, 0)
    env.close()
    text = (tmp_path / "logs" / "r1" / "r1.log").read_text()
    assert "to both" in text and "file only line" in text
    err = capsys.readouterr().err
    assert "to both" in err and "file only line" not in err
    assert list((tmp_path / "logs" / "r1").glob("events.out.tfevents.*"))


def test_env_info_has_versions():
    info = env_info()
    assert {"python", "torch", "cuda_available", "torch_threads"} <= set(info)


def test_run_entry_turns_user_errors_into_one_line(capsys, clean_root):
    def bad():
        raise UserError("--foo: bar is wrong; use baz")

    assert run_entry(bad) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --foo: bar is wrong; use baz"
    assert run_entry(lambda: None) == 0


def test_run_entry_reports_schedule_errors(capsys, clean_root):
    from compress.errors import ScheduleError

    def bad():
        raise ScheduleError("unknown key", source="s.yaml", line=3, key_path="pruners.p")

    assert run_entry(bad) == 2
    assert "s.yaml, line 3" in capsys.readouterr().err
