"""Command-line options of the SR app (`--optform=SR` comes first, as in the original design)."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from apps.common.distillation import add_kd_options, check_kd_options
from apps.common.load_weights import add_load_weights_option, check_load_weights
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

from .models import MODELS
from .solver import TASK_LOSSES

log = logging.getLogger(__name__)

DEMO_NOTE = ("With no data option the app trains and tests on real photographs shipped inside the "
             "scikit-image wheel (see apps/sr/data.py).")
OPTFORM_HELP = "application; must be the first argument (SR for super-resolution)"

KD_EXAMPLE = "schedules/sr/kd_edsr_teacher.yaml"


def architecture(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The options that rebuild a checkpoint's model: --model and --upscale_factor."""
    return {"model": ckpt["arch"]["name"], "upscale_factor": int(ckpt["arch"]["kwargs"].get("upscale_factor", 2))}


class TrainOptions:
    """Training options: `TrainOptions().parse(argv)` -> argparse.Namespace."""

    def __init__(self) -> None:
        p = argparse.ArgumentParser(
            prog="train.py", formatter_class=HelpFormatter,
            description="Train (and compress) a super-resolution network on the Y channel.\n" + DEMO_NOTE,
            epilog="example:\n  python train.py --optform=SR --compress=schedules/sr/agp_prune.yaml\n"
                   "  python train.py --optform=SR --resume checkpoints/<run>/latest.pth\n"
                   "  python train.py --optform=SR --load_weights checkpoints/<dense run>/best.pth "
                   "--compress=schedules/sr/kd_agp_prune.yaml")
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
        g.add_argument("--loss", default="mse", choices=list(TASK_LOSSES),
                       help="task loss against the HR image: mse (mean squared error) or l1 (mean absolute error, "
                            "the better fine-tuning loss for a quantized model; see docs/benchmarks/kd-quality.md)")
        g.add_argument("--compress", default=None, metavar="YAML",
                       help="compression schedule, e.g. schedules/sr/agp_prune.yaml (default: dense training)")
        add_kd_options(g, KD_EXAMPLE)
        add_load_weights_option(g)
        add_run_options(p, "<model>_x<scale>_<schedule>_<time>")
        self.parser = p

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse `argv` (default sys.argv[1:]) and settle the run: its name, or the resumed run's options."""
        opt = parse_args(self.parser, argv)
        check_load_weights(opt, "SR", architecture)
        if opt.resume:
            return resume_options(opt, load_checkpoint(opt.resume, "SR").get("options") or {})
        check_kd_options(opt, "SR", KD_EXAMPLE)
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
