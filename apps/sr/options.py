"""Command-line options of the SR app (`--optform=SR` comes first, as in the original design)."""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from apputils.checkpoint import load_checkpoint
from apputils.execution_env import UserError

from .models import MODELS

log = logging.getLogger(__name__)

#: Default folders holding the runs' checkpoints (--checkpoint_dir) and the tests' results (--results_dir).
CHECKPOINT_ROOT = Path("checkpoints")
RESULTS_ROOT = Path("results")

#: Options a resumed run may change; every other option comes from the checkpoint.
RESUME_MAY_CHANGE = ("resume", "nEpochs", "device", "threads", "print_freq", "logdir", "checkpoint_dir", "given")

DEMO_NOTE = ("With no data option the app trains and tests on real photographs shipped inside the "
             "scikit-image wheel (see apps/sr/data.py).")

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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default unless it is None or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _positive(kind: type) -> Callable[[str], int | float]:
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    check.__name__ = f"positive {kind.__name__}"
    return check


class _InSchedule(argparse.Action):
    """A Distiller KD option: refused with the schedule key that does its job here."""

    def __init__(self, option_strings: Sequence[str], dest: str, key: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.key = key

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string} is Distiller's option; here it is {self.key} "
                        "(see README: Knowledge distillation)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--optform", required=True, metavar="APP",
                   help="application; must be the first argument (SR for super-resolution)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run; auto = cuda when present, else cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="data loader worker processes (0 = load in the main process)")
    p.add_argument("--seed", type=int, default=123, help="random seed")
    p.add_argument("--logdir", default="logs", help="log folder; a run logs to <logdir>/<run>/<run>.log "
                   "and writes TensorBoard events beside it")


class TrainOptions:
    """Training options: `TrainOptions().parse(argv)` -> argparse.Namespace."""

    def __init__(self) -> None:
        p = argparse.ArgumentParser(
            prog="train.py", formatter_class=_Formatter,
            description="Train (and compress) a super-resolution network on the Y channel.\n" + DEMO_NOTE,
            epilog="example:\n  python train.py --optform=SR --compress=schedules/sr/agp_prune.yaml\n"
                   "  python train.py --optform=SR --resume checkpoints/<run>/latest.pth")
        _common(p)
        g = p.add_argument_group("model and data")
        g.add_argument("--model", default="C2SRCNN", choices=list(MODELS), help="architecture")
        g.add_argument("--upscale_factor", type=_positive(int), default=2, help="super-resolution scale")
        g.add_argument("--traindata", default=None, metavar="DIR",
                       help="training images: a BSDS300 root or a folder of HR images (default: embedded)")
        g.add_argument("--testdata", default=None, metavar="DIR",
                       help="validation images (default: the validation split of --traindata)")
        g.add_argument("--crop_size", type=_positive(int), default=32, help="HR training crop size (pixels)")
        g = p.add_argument_group("optimisation")
        g.add_argument("--batchSize", type=_positive(int), default=16, help="training batch size")
        g.add_argument("--testBatchSize", type=_positive(int), default=1,
                       help="validation batch size (whole images of one size only when > 1)")
        g.add_argument("--nEpochs", type=_positive(int), default=8, help="number of epochs")
        g.add_argument("--iters_per_epoch", type=_positive(int), default=150,
                       help="minibatches per epoch (random crops, so any number works)")
        g.add_argument("--lr", type=_positive(float), default=1e-3, help="Adam learning rate")
        g.add_argument("--compress", default=None, metavar="YAML",
                       help="compression schedule, e.g. schedules/sr/agp_prune.yaml (default: dense training)")
        g.add_argument("--kd_teacher", "--kd-teacher", default=None, metavar="CKPT",
                       help="distil from this checkpoint of the app (train.py; thinned or quantized too): its model "
                            "is rebuilt and is the teacher a --compress schedule names with `teacher: teacher` "
                            "(e.g. schedules/sr/kd_edsr_teacher.yaml); `teacher: self` needs no checkpoint")
        for flags, key in DISTILLER_KD_OPTIONS.items():
            g.add_argument(*flags, action=_InSchedule, key=key, dest=f"distiller_{flags[0][2:].replace('-', '_')}")
        g = p.add_argument_group("run")
        g.add_argument("--save", default=None, metavar="RUN",
                       help="run name, not a path: checkpoints go to <checkpoint_dir>/<RUN>/ (latest.pth, "
                            "best.pth), logs to <logdir>/<RUN>/ (default: <model>_x<scale>_<schedule>_<time>); "
                            "when the run starts, an existing run of that name is moved aside to "
                            "<RUN>_archived_<time>, never overwritten")
        g.add_argument("--checkpoint_dir", default=str(CHECKPOINT_ROOT), metavar="DIR",
                       help="folder holding the runs' checkpoint folders, e.g. on another disk: "
                            "--checkpoint_dir /data/runs --save x writes /data/runs/x/latest.pth")
        g.add_argument("--resume", default=None, metavar="CKPT",
                       help="continue the run of this checkpoint, in the folder the checkpoint is in unless "
                            "--checkpoint_dir is given (its options are kept; --nEpochs, --device, --threads, "
                            "--print_freq, --logdir may change)")
        g.add_argument("--print_freq", type=_positive(int), default=10,
                       help="minibatches between loss logs / TensorBoard points")
        self.parser = p

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse `argv` (default sys.argv[1:]) and settle the run: its name, or the resumed run's options.

        Nothing is created or moved here: the Trainer does that when the run starts.
        """
        opt = _parse(self.parser, argv)
        _check_folder(opt.checkpoint_dir, "--checkpoint_dir")
        if opt.resume:
            saved = load_checkpoint(opt.resume, "SR").get("options") or {}
            for key, value in saved.items():
                if key in ("resume", "given") or not hasattr(opt, key):
                    continue
                if key in RESUME_MAY_CHANGE:
                    if key not in opt.given:
                        setattr(opt, key, value)
                    continue
                if key in opt.given and getattr(opt, key) != value:
                    log.warning("--%s %s ignored: a resumed run keeps its checkpoint's value %r",
                                key, getattr(opt, key), value)
                setattr(opt, key, value)
            if "checkpoint_dir" not in opt.given:  # continue where the checkpoint is, wherever it was moved
                folder = Path(opt.resume).parent
                folder = folder.resolve() if folder.name in ("", "..") else folder
                if folder.name != opt.save:
                    log.info("resuming in '%s': the run continues there under the name '%s'", folder, folder.name)
                opt.checkpoint_dir, opt.save = str(folder.parent), folder.name
            return opt
        if opt.compress and not Path(opt.compress).is_file():
            raise UserError(f"--compress: schedule file '{opt.compress}' does not exist; see schedules/sr/ "
                            f"for the shipped ones")
        if opt.kd_teacher and not opt.compress:
            raise UserError("--kd_teacher needs a --compress schedule whose distillers section names "
                            "`teacher: teacher`, e.g. --compress schedules/sr/kd_edsr_teacher.yaml")
        if opt.kd_teacher and not Path(opt.kd_teacher).is_file():
            raise UserError(f"--kd_teacher: checkpoint '{opt.kd_teacher}' does not exist; give a checkpoint written "
                            "by train.py (checkpoints/<run>/best.pth)")
        if opt.save is None:
            schedule = Path(opt.compress).stem if opt.compress else "dense"
            opt.save = f"{opt.model}_x{opt.upscale_factor}_{schedule}_{time.strftime('%Y%m%d-%H%M%S')}"
        _check_run_name(opt.save, "--checkpoint_dir")
        return opt


class TestOptions:
    """Test options: `TestOptions().parse(argv)` -> argparse.Namespace."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        p = argparse.ArgumentParser(
            prog="test.py", formatter_class=_Formatter,
            description="Test a trained (possibly compressed) SR checkpoint: PSNR/SSIM per image beside "
                        "bicubic, SR images, and optionally the reports.\n" + DEMO_NOTE,
            epilog="example:\n  python test.py --optform=SR --model=checkpoints/<run>/best.pth --reports")
        _common(p)
        p.add_argument("--model", required=True, metavar="CKPT",
                       help="checkpoint written by train.py (checkpoints/<run>/best.pth)")
        p.add_argument("--testdata", default=None, metavar="DIR",
                       help="test images: a folder of HR images or a BSDS300 root (default: embedded)")
        p.add_argument("--upscale_factor", type=_positive(int), default=None,
                       help="scale (default: the checkpoint's)")
        p.add_argument("--save", default=None, metavar="RUN",
                       help="run name, not a path: results go to <results_dir>/<RUN>/ (default: the "
                            "checkpoint's run name)")
        p.add_argument("--results_dir", default=str(RESULTS_ROOT), metavar="DIR",
                       help="folder holding the results folders (SR images, metrics.csv, reports)")
        p.add_argument("--reports", action="store_true",
                       help="also write sensitivity / sparsity / MACs / ONNX reports into <results_dir>/<RUN>/reports/")
        p.add_argument("--sense_type", default="element", choices=["element", "filter", "channel"],
                       help="sensitivity analysis granularity for --reports")
        self.parser = p

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse `argv` (default sys.argv[1:]); the scale and run name default to the checkpoint's."""
        opt = _parse(self.parser, argv)
        _check_folder(opt.results_dir, "--results_dir")
        ckpt = load_checkpoint(opt.model, "SR")
        if opt.upscale_factor is None:
            opt.upscale_factor = int(ckpt["arch"]["kwargs"].get("upscale_factor", 2))
        if opt.save is None:
            opt.save = str(ckpt.get("run") or Path(opt.model).resolve().parent.name)
        _check_run_name(opt.save, "--results_dir")
        return opt


def _check_run_name(name: str, folder_option: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"--save '{name}' is not a run name: give a plain folder name such as 'demo'; to keep "
                        f"the run elsewhere, give the folder with {folder_option} (e.g. {folder_option} "
                        f"/data/runs --save demo)")


def _check_folder(path: str, option: str) -> None:
    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{option} '{path}' is a file, not a folder; give a folder (it is created if missing)")


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    opt = parser.parse_args(argv)
    if opt.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA device is available; use --device cpu or auto")
    # which options the user typed, so a resumed run can tell a deliberate change from a default
    probe = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            if action.nargs == 0:
                probe.add_argument(*action.option_strings, action="store_true", dest=action.dest)
            else:
                probe.add_argument(*action.option_strings, dest=action.dest)
    given, _ = probe.parse_known_args(argv)
    opt.given = sorted(vars(given))
    return opt
