"""Command-line pieces every app's options share: the common flags, run names, resuming a run.

An app builds its own argparse parser (its model and data flags), adds `add_common`, and settles the
run with `settle_new_run` or `resume_options`, so every app names and resumes runs the same way.
Nothing is created or moved while options are parsed: the Trainer / Tester do that when the run starts.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from apputils.checkpoint import load_checkpoint
from apputils.distributed import sync_bn_refusal
from apputils.execution_env import UserError

log = logging.getLogger(__name__)

#: Default folders holding the runs' checkpoints (--checkpoint_dir) and the tests' results (--results_dir).
CHECKPOINT_ROOT = Path("checkpoints")
RESULTS_ROOT = Path("results")

#: Options a resumed run may change; every other option comes from the checkpoint.
RESUME_MAY_CHANGE = ("resume", "nEpochs", "device", "threads", "print_freq", "logdir", "checkpoint_dir", "given")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default unless it is None or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def positive(kind: type) -> Callable[[str], int | float]:
    """An argparse type: `kind` (int or float) greater than zero."""
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


def add_common(p: argparse.ArgumentParser, optform_help: str) -> None:
    """--optform (first), --device, --threads, --seed, --logdir."""
    p.add_argument("--optform", required=True, metavar="APP", help=optform_help)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run; auto = cuda when present, else cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="data loader worker processes (0 = load in the main process)")
    p.add_argument("--seed", type=int, default=123, help="random seed")
    p.add_argument("--logdir", default="logs", help="log folder; a run logs to <logdir>/<run>/<run>.log "
                   "and writes TensorBoard events beside it")


def add_loop_options(g: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--batchSize, --testBatchSize, --nEpochs, --iters_per_epoch: the training loop's size."""
    g.add_argument("--batchSize", type=positive(int), default=16, help="training batch size")
    g.add_argument("--testBatchSize", type=positive(int), default=1,
                   help="validation batch size (whole images of one size only when > 1)")
    g.add_argument("--nEpochs", type=positive(int), default=8, help="number of epochs")
    g.add_argument("--iters_per_epoch", type=positive(int), default=150,
                   help="minibatches per epoch (random crops, so any number works)")
    g.add_argument("--scale_lr", action="store_true",
                   help="under torchrun, train with --lr x the number of processes (the linear scaling rule: "
                        "the global batch is --batchSize x processes); a run resumed with another number of "
                        "processes rescales its optimizer's learning rate the same way")
    g.add_argument("--sync_bn", action="store_true",
                   help="under torchrun on CUDA, BatchNorm layers normalise with the statistics of the global "
                        "batch (torch.nn.SyncBatchNorm) instead of each process's own share")


def add_run_options(p: argparse.ArgumentParser, default_name: str) -> None:
    """The "run" group: --save (default `default_name`), --checkpoint_dir, --resume, --print_freq."""
    g = p.add_argument_group("run")
    g.add_argument("--save", default=None, metavar="RUN",
                   help="run name, not a path: checkpoints go to <checkpoint_dir>/<RUN>/ (latest.pth, "
                        f"best.pth), logs to <logdir>/<RUN>/ (default: {default_name}); "
                        "when the run starts, an existing run of that name is moved aside to "
                        "<RUN>_archived_<time>, never overwritten")
    g.add_argument("--checkpoint_dir", default=str(CHECKPOINT_ROOT), metavar="DIR",
                   help="folder holding the runs' checkpoint folders, e.g. on another disk: "
                        "--checkpoint_dir /data/runs --save x writes /data/runs/x/latest.pth")
    g.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue the run of this checkpoint, in the folder the checkpoint is in unless "
                        "--checkpoint_dir is given (its options are kept; --nEpochs, --device, --threads, "
                        "--print_freq, --logdir may change)")
    g.add_argument("--print_freq", type=positive(int), default=10,
                   help="minibatches between loss logs / TensorBoard points")


def add_test_options(p: argparse.ArgumentParser, outputs: str) -> None:
    """test.py's --model (a checkpoint), --save, --results_dir (holding `outputs`), --reports, --sense_type."""
    p.add_argument("--model", required=True, metavar="CKPT",
                   help="checkpoint written by train.py (checkpoints/<run>/best.pth)")
    p.add_argument("--save", default=None, metavar="RUN",
                   help="run name, not a path: results go to <results_dir>/<RUN>/ (default: the "
                        "checkpoint's run name)")
    p.add_argument("--results_dir", default=str(RESULTS_ROOT), metavar="DIR",
                   help=f"folder holding the results folders ({outputs}, metrics.csv, reports)")
    p.add_argument("--reports", action="store_true",
                   help="also write sensitivity / sparsity / MACs / ONNX reports into <results_dir>/<RUN>/reports/")
    p.add_argument("--sense_type", default="element", choices=["element", "filter", "channel"],
                   help="sensitivity analysis granularity for --reports")


def settle_test_run(opt: argparse.Namespace, ckpt: dict[str, Any]) -> argparse.Namespace:
    """A test's run name: --save, else the checkpoint's run (else its folder's name)."""
    if opt.save is None:
        opt.save = str(ckpt.get("run") or Path(opt.model).resolve().parent.name)
    check_run_name(opt.save, "--results_dir")
    return opt


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv`, refuse --device cuda without CUDA, --sync_bn on the CPU and folder options that name files,
    and record in `given` which options the user typed."""
    opt = parser.parse_args(argv)
    if opt.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA device is available; use --device cpu or auto")
    if getattr(opt, "sync_bn", False) and (opt.device == "cpu" or not torch.cuda.is_available()):
        raise UserError(sync_bn_refusal("cpu"))
    for folder in ("checkpoint_dir", "results_dir"):
        if hasattr(opt, folder):
            check_folder(getattr(opt, folder), f"--{folder}")
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


def resume_options(opt: argparse.Namespace, saved: dict[str, Any],
                   may_change: Sequence[str] = RESUME_MAY_CHANGE) -> argparse.Namespace:
    """A resumed run's options: the checkpoint's `saved` options, except those in `may_change` the user typed;
    the run continues in the folder the checkpoint is in (wherever it was moved) unless --checkpoint_dir."""
    for key, value in saved.items():
        if key in ("resume", "given") or not hasattr(opt, key):
            continue
        if key in may_change:
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


def settle_new_run(opt: argparse.Namespace, prefix: str, schedules: str) -> argparse.Namespace:
    """Check --compress, name the run (<prefix>_<schedule>_<time> unless --save)."""
    if opt.compress and not Path(opt.compress).is_file():
        raise UserError(f"--compress: schedule file '{opt.compress}' does not exist; see {schedules} "
                        f"for the shipped ones")
    if opt.save is None:
        schedule = Path(opt.compress).stem if opt.compress else "dense"
        opt.save = f"{prefix}_{schedule}_{time.strftime('%Y%m%d-%H%M%S')}"
    check_run_name(opt.save, "--checkpoint_dir")
    return opt


def app_checkpoint(path: str, app: str, option: str) -> dict[str, Any]:
    """The checkpoint `option` names (--kd_teacher, --load_weights), which must exist and come from `app`'s train.py."""
    if not Path(path).is_file():
        raise UserError(f"{option}: checkpoint '{path}' does not exist; give a checkpoint written by train.py "
                        "(checkpoints/<run>/best.pth)")
    ckpt = load_checkpoint(path)
    if ckpt["app"] != app:
        raise UserError(f"{option} '{path}' was trained by app '{ckpt['app']}'; this run trains {app}: give a "
                        f"checkpoint written by train.py --optform={app}")
    return ckpt


def check_run_name(name: str, folder_option: str) -> None:
    """Refuse a --save that is not a plain folder name (`folder_option` is where a path belongs)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"--save '{name}' is not a run name: give a plain folder name such as 'demo'; to keep "
                        f"the run elsewhere, give the folder with {folder_option} (e.g. {folder_option} "
                        f"/data/runs --save demo)")


def check_folder(path: str, option: str) -> None:
    """Refuse a folder option that names an existing file."""
    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{option} '{path}' is a file, not a folder; give a folder (it is created if missing)")
