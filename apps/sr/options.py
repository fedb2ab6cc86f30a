"""Command-line options of the SR app (`--optform=SR` comes first, as in the original design)."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from apps.common.options import (
    CHECKPOINT_ROOT,
    RESULTS_ROOT,
    RESUME_MAY_CHANGE,
    HelpFormatter,
    add_common,
    add_loop_options,
    add_run_options,
    add_test_options,
    parse_args,
    positive,
    resume_options,
    settle_new_run,
    settle_test_run,
)
from apputils.checkpoint import load_checkpoint
from apputils.execution_env import UserError

from .models import MODELS

log = logging.getLogger(__name__)

DEMO_NOTE = ("With no data option the app trains and tests on real photographs shipped inside the "
             "scikit-image wheel (see apps/sr/data.py).")
OPTFORM_HELP = "application; must be the first argument (SR for super-resolution)"

#: Distiller's knowledge-distillation options and what does their job here.
_IN_SCHEDULE = "in the --compress schedule's distillers section"
DISTILLER_KD_OPTIONS: dict[tuple[str, ...], str] = {
    ("--kd-temp", "--kd-temperature", "--kd_temp"): f"`temperature:` {_IN_SCHEDULE} (with output_loss: kl)",
    ("--kd-student-wt", "--kd-sw", "--kd_student_wt"): f"`student_weight:` {_IN_SCHEDULE}",
    ("--kd-distill-wt", "--kd-dw", "--kd_distill_wt"): f"`distill_weight:` {_IN_SCHEDULE}",
    ("--kd-start-epoch", "--kd_start_epoch"): "the `starting_epoch:` of the schedule's distiller policy",
    ("--kd-teacher-wt", "--kd-tw"): "not needed: the teacher is frozen (Distiller required 0 as well)",
    ("--kd-resume", "--kd-pretrained"): "--kd_teacher CHECKPOINT (a train.py checkpoint holds the teacher's "
                                        "architecture and weights)",
}


class _InSchedule(argparse.Action):
    """A Distiller KD option: refused with the schedule key that does its job here."""

    def __init__(self, option_strings: Sequence[str], dest: str, key: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.key = key

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string} is Distiller's option; here it is {self.key} "
                        "(see README: Knowledge distillation)")


class TrainOptions:
    """Training options: `TrainOptions().parse(argv)` -> argparse.Namespace."""

    def __init__(self) -> None:
        p = argparse.ArgumentParser(
            prog="train.py", formatter_class=HelpFormatter,
            description="Train (and compress) a super-resolution network on the Y channel.\n" + DEMO_NOTE,
            epilog="example:\n  python train.py --optform=SR --compress=schedules/sr/agp_prune.yaml\n"
                   "  python train.py --optform=SR --resume checkpoints/<run>/latest.pth")
        add_common(p, OPTFORM_HELP)
        g = p.add_argument_group("model and data")
        g.add_argument("--model", default="C2SRCNN", choices=list(MODELS), help="architecture")
        g.add_argument("--upscale_factor", type=positive(int), default=2, help="super-resolution scale")
        g.add_argument("--traindata", default=None, metavar="DIR",
                       help="training images: a BSDS300 root or a folder of HR images (default: embedded)")
        g.add_argument("--testdata", default=None, metavar="DIR",
                       help="validation images (default: the validation split of --traindata)")
        g.add_argument("--crop_size", type=positive(int), default=32, help="HR training crop size (pixels)")
        g = p.add_argument_group("optimisation")
        add_loop_options(g)
        g.add_argument("--lr", type=positive(float), default=1e-3, help="Adam learning rate")
        g.add_argument("--compress", default=None, metavar="YAML",
                       help="compression schedule, e.g. schedules/sr/agp_prune.yaml (default: dense training)")
        g.add_argument("--kd_teacher", "--kd-teacher", default=None, metavar="CKPT",
                       help="distil from this checkpoint of the app (train.py; thinned or quantized too): its model "
                            "is rebuilt and is the teacher a --compress schedule names with `teacher: teacher` "
                            "(e.g. schedules/sr/kd_edsr_teacher.yaml); `teacher: self` needs no checkpoint")
        for flags, key in DISTILLER_KD_OPTIONS.items():
            g.add_argument(*flags, action=_InSchedule, key=key, dest=f"distiller_{flags[0][2:].replace('-', '_')}")
        add_run_options(p, "<model>_x<scale>_<schedule>_<time>")
        self.parser = p

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse `argv` (default sys.argv[1:]) and settle the run: its name, or the resumed run's options."""
        opt = parse_args(self.parser, argv)
        if opt.resume:
            return resume_options(opt, load_checkpoint(opt.resume, "SR").get("options") or {})
        if opt.kd_teacher and not opt.compress:
            raise UserError("--kd_teacher needs a --compress schedule whose distillers section names "
                            "`teacher: teacher`, e.g. --compress schedules/sr/kd_edsr_teacher.yaml")
        if opt.kd_teacher and not Path(opt.kd_teacher).is_file():
            raise UserError(f"--kd_teacher: checkpoint '{opt.kd_teacher}' does not exist; give a checkpoint written "
                            "by train.py (checkpoints/<run>/best.pth)")
        return settle_new_run(opt, f"{opt.model}_x{opt.upscale_factor}", "schedules/sr/")


class TestOptions:
    """Test options: `TestOptions().parse(argv)` -> argparse.Namespace."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        p = argparse.ArgumentParser(
            prog="test.py", formatter_class=HelpFormatter,
            description="Test a trained (possibly compressed) SR checkpoint: PSNR/SSIM per image beside "
                        "bicubic, SR images, and optionally the reports.\n" + DEMO_NOTE,
            epilog="example:\n  python test.py --optform=SR --model=checkpoints/<run>/best.pth --reports")
        add_common(p, OPTFORM_HELP)
        add_test_options(p, "SR images")
        p.add_argument("--testdata", default=None, metavar="DIR",
                       help="test images: a folder of HR images or a BSDS300 root (default: embedded)")
        p.add_argument("--upscale_factor", type=positive(int), default=None,
                       help="scale (default: the checkpoint's)")
        self.parser = p

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse `argv` (default sys.argv[1:]); the scale and run name default to the checkpoint's."""
        opt = parse_args(self.parser, argv)
        ckpt = load_checkpoint(opt.model, "SR")
        if opt.upscale_factor is None:
            opt.upscale_factor = int(ckpt["arch"]["kwargs"].get("upscale_factor", 2))
        return settle_test_run(opt, ckpt)


__all__ = ["CHECKPOINT_ROOT", "RESULTS_ROOT", "RESUME_MAY_CHANGE", "TestOptions", "TrainOptions"]
