"""Command-line options of the deblurring app (`--optform=Deblur` comes first)."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apps.common.distillation import add_kd_options, check_kd_options
from apps.common.load_weights import add_load_weights_option, check_load_weights
from apps.common.options import (
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

from .data import DEFAULT_BLUR_SIZE, DEFAULT_NOISE
from .models import CRITIC_WIDTHS, NORMS, PRESETS

log = logging.getLogger(__name__)

APP = "Deblur"
DEMO_NOTE = ("With no data option the app trains and tests on real photographs shipped inside the scikit-image "
             "wheel, blurred by synthetic camera-shake kernels (see apps/deblur/data.py).")
OPTFORM_HELP = "application; must be the first argument (Deblur for deblurring)"
GAN_MODES = ("wgan-gp", "off")
KD_EXAMPLE = "schedules/deblur/kd_teacher.yaml"


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _steps(text: str) -> int:
    value = _non_negative(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"must be a whole number of steps, got {text}")
    return int(value)


def _dropout(text: str) -> float:
    value = _non_negative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
    return value


def _blur_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, from_checkpoint: bool) -> None:
    """--blur_size and --noise: the synthetic blur of the embedded photographs."""
    note = " (default: the checkpoint's)" if from_checkpoint else ""
    p.add_argument("--blur_size", type=positive(int), default=None if from_checkpoint else DEFAULT_BLUR_SIZE,
                   help="synthetic blur of the embedded photographs: kernel size in pixels (camera paths are "
                        "30-100%% of it long)" + note)
    p.add_argument("--noise", type=_non_negative, default=None if from_checkpoint else DEFAULT_NOISE,
                   help="synthetic blur: Gaussian noise added to the blurred images, in 8-bit levels" + note)


def architecture(ckpt: dict[str, Any], critic: bool) -> dict[str, Any]:
    """The options that rebuild a checkpoint's generator (--model, --ngf, --n_blocks, --dropout, --norm) and,
    when the run trains a `critic` and the checkpoint has one (then loaded too), its --ndf."""
    saved, kwargs = ckpt.get("options") or {}, ckpt["arch"]["kwargs"]
    options = {key: saved[key] for key in ("model",) if key in saved}
    options.update({key: kwargs[key] for key in ("ngf", "n_blocks", "dropout", "norm") if key in kwargs})
    record = (ckpt.get("networks") or {}).get("critic")
    if critic and record is not None:
        options["ndf"] = record["arch"]["kwargs"]["ndf"]
    return options


class TrainOptions:
    """Training options: `TrainOptions().parse(argv)` -> argparse.Namespace."""

    def __init__(self) -> None:
        p = argparse.ArgumentParser(
            prog="train.py", formatter_class=HelpFormatter,
            description="Train (and compress) a DeblurGAN generator on RGB images, with a WGAN-GP critic or "
                        "on the content loss alone.\n" + DEMO_NOTE,
            epilog="example:\n  python train.py --optform=Deblur --compress=schedules/deblur/agp_prune.yaml\n"
                   "  python train.py --optform=Deblur --resume checkpoints/<run>/latest.pth\n"
                   "  python train.py --optform=Deblur --load_weights checkpoints/<dense run>/best.pth "
                   "--compress=schedules/deblur/kd_filter_prune.yaml")
        add_common(p, OPTFORM_HELP)
        g = p.add_argument_group("model and data")
        g.add_argument("--model", default="DeblurGAN-CPU", choices=list(PRESETS),
                       help="generator size: DeblurGAN-CPU (trains on a CPU) or DeblurGAN (the paper's: ngf 64, "
                            "9 blocks, dropout 0.5); --ngf / --n_blocks / --dropout override it")
        g.add_argument("--ngf", type=positive(int), default=None, help="generator filters after the head")
        g.add_argument("--n_blocks", type=positive(int), default=None, help="residual blocks")
        g.add_argument("--dropout", type=_dropout, default=None, help="dropout inside the residual blocks")
        g.add_argument("--norm", default="instance", choices=NORMS, help="normalisation layers (both networks)")
        g.add_argument("--traindata", default=None, metavar="DIR",
                       help="training pairs: GoPro scenes, blur/ + sharp/ folders, or side-by-side A|B images, "
                            "optionally inside train/ and test/ (default: embedded photographs, synthetic blur)")
        g.add_argument("--testdata", default=None, metavar="DIR",
                       help="validation pairs, same layouts (default: the validation split of --traindata)")
        g.add_argument("--crop_size", type=positive(int), default=64, help="training crop size (pixels)")
        _blur_options(g, from_checkpoint=False)
        g = p.add_argument_group("optimisation")
        add_loop_options(g)
        g.add_argument("--lr", type=positive(float), default=None,
                       help="Adam learning rate of the generator and the critic (default: DeblurGAN's 1e-4 with "
                            "the critic, 1e-3 with --gan off)")
        g.add_argument("--warmup_iters", type=_steps, default=100,
                       help="the LR rises linearly over the first N generator steps of a new run (an untrained "
                            "generator's first full-LR steps push it far from its input; 0: off)")
        g.add_argument("--decay_epochs", type=int, default=None,
                       help="the LR falls linearly to 0 over the last N epochs, as DeblurGAN's second half "
                            "(default: half of --nEpochs; 0: constant). A schedule with lr_schedulers drives "
                            "the generator's LR instead")
        g.add_argument("--compress", default=None, metavar="YAML",
                       help="compression schedule for the generator, e.g. schedules/deblur/agp_prune.yaml "
                            "(default: dense training)")
        add_kd_options(g, KD_EXAMPLE)
        add_load_weights_option(g)
        g = p.add_argument_group("losses and critic")
        g.add_argument("--gan", default="wgan-gp", choices=GAN_MODES,
                       help="adversarial training: a PatchGAN critic with WGAN-GP, or off (content loss only)")
        g.add_argument("--content_weight", type=_non_negative, default=100.0,
                       help="weight of the content loss (the adversarial loss has weight 1)")
        g.add_argument("--perceptual_weights", default=None, metavar="FILE",
                       help="content loss on VGG19 conv3_3 features, from this torchvision-format VGG19 "
                            "ImageNet state dict (e.g. vgg19-dcbb9e9d.pth; nothing is downloaded); "
                            "default: L1 on pixels")
        g.add_argument("--critic_iters", type=positive(int), default=5, help="critic updates per generator update")
        g.add_argument("--gp_weight", type=_non_negative, default=10.0, help="WGAN-GP gradient penalty weight")
        g.add_argument("--ndf", type=positive(int), default=None,
                       help="critic filters in its first layer (default: 16 for DeblurGAN-CPU, 64 for DeblurGAN)")
        add_run_options(p, "<model>_<schedule>_<time>")
        self.parser = p

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse `argv` (default sys.argv[1:]) and settle the run: its name, or the resumed run's options."""
        opt = parse_args(self.parser, argv)
        check_load_weights(opt, APP, lambda ckpt: architecture(ckpt, opt.gan != "off"))
        if opt.resume:
            return resume_options(opt, load_checkpoint(opt.resume, APP).get("options") or {})
        check_kd_options(opt, APP, KD_EXAMPLE)
        if opt.perceptual_weights and not Path(opt.perceptual_weights).is_file():
            raise UserError(f"--perceptual_weights: '{opt.perceptual_weights}' does not exist; give the path of "
                            "torchvision's VGG19 ImageNet weights (vgg19-dcbb9e9d.pth), or leave the option out "
                            "for the L1 content loss")
        if opt.lr is None:
            opt.lr = 1e-3 if opt.gan == "off" else 1e-4
        if opt.ndf is None:
            opt.ndf = CRITIC_WIDTHS[opt.model]
        if opt.decay_epochs is not None and not 0 <= opt.decay_epochs <= opt.nEpochs:
            raise UserError(f"--decay_epochs {opt.decay_epochs} must be between 0 and --nEpochs {opt.nEpochs}")
        return settle_new_run(opt, opt.model, "schedules/deblur/")


class TestOptions:
    """Test options: `TestOptions().parse(argv)` -> argparse.Namespace."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        p = argparse.ArgumentParser(
            prog="test.py", formatter_class=HelpFormatter,
            description="Test a trained (possibly compressed) deblurring checkpoint: RGB PSNR/SSIM per image "
                        "beside the blurred input's, deblurred images, and optionally the reports.\n" + DEMO_NOTE,
            epilog="example:\n  python test.py --optform=Deblur --model=checkpoints/<run>/best.pth --reports")
        add_common(p, OPTFORM_HELP)
        add_test_options(p, "deblurred images")
        p.add_argument("--testdata", default=None, metavar="DIR",
                       help="test pairs: GoPro scenes, blur/ + sharp/ folders, or side-by-side A|B images "
                            "(default: the embedded test photographs with synthetic blur)")
        _blur_options(p, from_checkpoint=True)
        self.parser = p

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse `argv`; the synthetic blur and the run name default to the checkpoint's."""
        opt = parse_args(self.parser, argv)
        ckpt = load_checkpoint(opt.model, APP)
        saved = ckpt.get("options") or {}
        if opt.blur_size is None:
            opt.blur_size = int(saved.get("blur_size", DEFAULT_BLUR_SIZE))
        if opt.noise is None:
            opt.noise = float(saved.get("noise", DEFAULT_NOISE))
        return settle_test_run(opt, ckpt)
