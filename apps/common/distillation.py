"""Knowledge distillation from the command line, the same in every app: `--kd_teacher CHECKPOINT` (a
train.py checkpoint whose model a schedule's distiller names `teacher: teacher`), and Distiller's --kd-*
options refused with the schedule key that does their job here."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apps.common.options import app_checkpoint
from apputils.checkpoint import rebuild_model
from apputils.execution_env import UserError
from compress.schedule_source import read_schedule

log = logging.getLogger(__name__)

#: The name a schedule's distiller uses for the --kd_teacher model (`teacher: teacher`).
KD_TEACHER = "teacher"

_IN_SCHEDULE = "in the --compress schedule's distillers section"
#: Distiller's knowledge-distillation options and what does their job here.
DISTILLER_KD_OPTIONS: dict[tuple[str, ...], str] = {
    ("--kd-temp", "--kd-temperature", "--kd_temp"): f"`temperature:` {_IN_SCHEDULE} (with output_loss: kl)",
    ("--kd-student-wt", "--kd-sw", "--kd_student_wt"): f"`student_weight:` {_IN_SCHEDULE}",
    ("--kd-distill-wt", "--kd-dw", "--kd_distill_wt"): f"`distill_weight:` {_IN_SCHEDULE}",
    ("--kd-start-epoch", "--kd_start_epoch"): "the `starting_epoch:` of the schedule's distiller policy",
    ("--kd-teacher-wt", "--kd-tw"): "not needed: the teacher is frozen (Distiller required 0 as well)",
    ("--kd-resume", "--kd-pretrained"): "--kd_teacher CHECKPOINT (a train.py checkpoint holds the teacher's "
                                        "architecture and weights)",
}


class InSchedule(argparse.Action):
    """A Distiller KD option: refused with the schedule key that does its job here."""

    def __init__(self, option_strings: Sequence[str], dest: str, key: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.key = key

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string} is Distiller's option; here it is {self.key} "
                        "(see docs/distillation.md)")


def add_kd_options(g: argparse.ArgumentParser | argparse._ArgumentGroup, example: str) -> None:
    """--kd_teacher CHECKPOINT (`example`: a shipped schedule naming it) and Distiller's --kd-* options, refused."""
    g.add_argument("--kd_teacher", "--kd-teacher", default=None, metavar="CKPT",
                   help="distil from this checkpoint of the app (train.py; thinned or quantized too): its model "
                        "is rebuilt and is the teacher a --compress schedule names with `teacher: teacher` "
                        f"(e.g. {example}); `teacher: self` needs no checkpoint")
    for flags, key in DISTILLER_KD_OPTIONS.items():
        g.add_argument(*flags, action=InSchedule, key=key, dest=f"distiller_{flags[0][2:].replace('-', '_')}")


def check_kd_options(opt: argparse.Namespace, app: str, example: str) -> None:
    """A new run's --kd_teacher, before the run starts: a --compress schedule with a distiller naming
    `teacher: teacher`, and an existing checkpoint of `app`."""
    if not opt.kd_teacher:
        return
    if not opt.compress:
        raise UserError("--kd_teacher needs a --compress schedule whose distillers section names "
                        f"`teacher: {KD_TEACHER}`, e.g. --compress {example}")
    teacher_checkpoint(opt.kd_teacher, app)
    if Path(opt.compress).is_file():  # a missing schedule is reported with the --compress checks
        distillers = read_schedule(opt.compress).data.get("distillers") or {}
        if not any(isinstance(d, dict) and d.get("teacher") == KD_TEACHER for d in distillers.values()):
            raise UserError(f"--kd_teacher was given but the schedule '{opt.compress}' has no distiller with "
                            f"`teacher: {KD_TEACHER}`; add a distillers section (see {example}) or leave "
                            "--kd_teacher out")


def teacher_checkpoint(path: str, app: str) -> dict[str, Any]:
    """The --kd_teacher checkpoint, which must come from the same app's train.py."""
    return app_checkpoint(path, app, "--kd_teacher")


def rebuild_teacher(ckpt: dict[str, Any], build: Callable[[str, dict[str, Any]], nn.Module], path: str,
                    device: torch.device | str, dummy_input: torch.Tensor | None = None) -> nn.Module:
    """The checkpoint's model as its schedule left it (thinned, quantized), in eval mode and frozen."""
    teacher, _, _ = rebuild_model(ckpt, build, device=device, dummy_input=dummy_input)
    log.info("distillation teacher '%s': %s from %s (epoch %s)", KD_TEACHER, ckpt["arch"]["name"], path,
             ckpt.get("epoch"))
    return teacher.requires_grad_(False).eval()


__all__ = ["DISTILLER_KD_OPTIONS", "KD_TEACHER", "InSchedule", "add_kd_options", "check_kd_options",
           "rebuild_teacher", "teacher_checkpoint"]
