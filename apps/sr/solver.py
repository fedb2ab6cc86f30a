"""The SR Trainer: builds the model, runs the training loop with the compression scheduler's hooks,
validates, and keeps checkpoints/<run>/latest.pth and best.pth (the loop around it: apps.common.solver)."""
from __future__ import annotations

import argparse
import logging
import math
from typing import Any

import torch
from torch import nn

from apps.common.distillation import KD_TEACHER, rebuild_teacher, teacher_checkpoint
from apps.common.solver import AppTrainer, archive, deterministic_cudnn, layer_sparsity
from apputils.checkpoint import CheckpointError, rebuild_model
from apputils.execution_env import UserError
from compress.modules import nonzero_parameters

from .evaluation import evaluate, mean_scores, model_input
from .models import MODELS, build_model
from .teacher import OtherInputTeacher

#: --loss: the task loss against the HR image
TASK_LOSSES: dict[str, type[nn.Module]] = {"mse": nn.MSELoss, "l1": nn.L1Loss}

log = logging.getLogger(__name__)

APP = "SR"


def arch_of(opt: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint's 'arch' record for the options' model."""
    return {"name": opt.model, "kwargs": {"num_channels": 1, "upscale_factor": opt.upscale_factor}}


def arch_input_kind(name: str) -> str:
    """'bicubic' or 'lr': the input the architecture `name` takes."""
    if name not in MODELS:
        raise CheckpointError(f"the checkpoint's architecture '{name}' is unknown; valid: {', '.join(MODELS)}")
    return MODELS[name].INPUT_KIND


def dummy_input(scale: int, kind: str, device: torch.device | str = "cpu", side: int = 32) -> torch.Tensor:
    """A zero Y input of the right kind for an HR image of `side` pixels: the HR size for pre-upsampling nets,
    `side // scale` for LR-input nets. 32 for tracing (structured pruning, thinning); the reports use 64."""
    side = side if kind == "bicubic" else side // scale or 1
    return torch.zeros(1, 1, side, side, device=device)


class Trainer(AppTrainer):
    """Trains an SR network on Y patches: `Trainer(config, training_loader, validation_loader).run()`.

    `best.pth` is the checkpoint with the fewest non-zero parameters and, among those, the best
    validation PSNR, so a compression run's best model is always a fully compressed one.
    """

    APP = APP
    BASELINE = "bicubic"

    # -- model ------------------------------------------------------------------------------------
    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.lr)

    def _dummy(self, model: nn.Module) -> torch.Tensor:
        return dummy_input(self.opt.upscale_factor, getattr(model, "INPUT_KIND", "bicubic"), self.device)

    def teachers(self) -> dict[str, nn.Module]:
        """{KD_TEACHER: the --kd_teacher checkpoint's model} for the schedule's distillers ({} without one).

        The model is rebuilt as the checkpoint's schedule left it (thinned, quantized); a teacher taking the
        other input kind than the model (EDSR's LR image for C2SRCNN's bicubic one) is fed through
        OtherInputTeacher.
        """
        path = self.opt.kd_teacher
        if not path:
            return {}
        ckpt = teacher_checkpoint(path, APP)
        scale = int(ckpt["arch"]["kwargs"].get("upscale_factor", 2))
        if scale != self.opt.upscale_factor:
            raise UserError(f"--kd_teacher '{path}' is a x{scale} model and this run trains x{self.opt.upscale_factor}; "
                            "give a teacher trained for the same scale")
        kind = arch_input_kind(ckpt["arch"]["name"])
        teacher = rebuild_teacher(ckpt, build_model, path, self.device, dummy_input(scale, kind, self.device))
        student_kind = MODELS[self.opt.model].INPUT_KIND
        return {KD_TEACHER: teacher if kind == student_kind else OtherInputTeacher(teacher, scale, student_kind)}

    def build_model(self) -> None:
        """Model, loss (--loss), optimizer (Adam) and the compression scheduler; restored when resuming."""
        self.criterion = TASK_LOSSES[self.opt.loss]()
        teachers = self.teachers()
        if self.opt.resume:
            ckpt = self.load_resume()
            kind = arch_input_kind(ckpt["arch"]["name"])
            self.model, self.compression_scheduler, self.optimizer = rebuild_model(
                ckpt, build_model, optimizer_factory=self._optimizer, device=self.device,
                dummy_input=dummy_input(self.opt.upscale_factor, kind, self.device), teachers=teachers)
            self.restore_progress(ckpt)
            return
        torch.manual_seed(self.opt.seed)
        self.new_model(build_model, arch_of(self.opt),
                       dummy_input(self.opt.upscale_factor, arch_input_kind(self.opt.model), self.device))
        self.optimizer = self._optimizer(self.model)
        if self.opt.compress:
            import compress

            self.compression_scheduler = compress.file_config(self.model, self.optimizer, self.opt.compress,
                                                              dummy_input=self._dummy(self.model), teachers=teachers)

    # -- one epoch --------------------------------------------------------------------------------
    def train(self, epoch: int, compression_scheduler: Any = None) -> float:
        """One epoch over the training loader with the scheduler's hooks; returns the mean loss."""
        model, sched = self.model, compression_scheduler
        model.train()
        n = len(self.training_loader)
        total = 0.0
        bar = self.epoch_bar(epoch)
        for i, batch in enumerate(bar):
            if sched is not None:
                sched.on_minibatch_begin(epoch, i, n, self.optimizer)
            output = self.net(model_input(model, batch, self.device))
            loss = self.criterion(output, batch["hr"].to(self.device))
            value, parts = self.optimizer_step(epoch, i, n, loss, sched)
            total += value
            self.log_step(bar, epoch, i, n, value, {k: float(v.detach()) for k, v in parts.items()})
        bar.close()
        return total / max(n, 1)

    def validate(self) -> dict[str, float]:
        """Mean PSNR / SSIM / loss on the validation images (and the bicubic baseline)."""
        scores = evaluate(self.model, self.validation_loader, self.device, self.opt.upscale_factor)
        return mean_scores(scores)

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict of the current state (see apputils/checkpoint.py for the contract)."""
        return {**self.progress(), "arch": arch_of(self.opt), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    # -- main -------------------------------------------------------------------------------------
    def describe(self) -> str:
        """The model, its size, the schedule and the device."""
        return (f"model {self.opt.model} x{self.opt.upscale_factor}: "
                f"{sum(p.numel() for p in self.model.parameters())} parameters, schedule "
                f"{self.opt.compress or 'none (dense)'}, device {self.device}")

    def headline(self) -> str:
        """Best validation PSNR, the bicubic baseline, non-zero parameters."""
        last = self.history[-1] if self.history else {}
        bicubic = last.get("bicubic_psnr", math.nan)
        return (f"best validation PSNR {self.best_metric:.3f} dB at epoch {self.best_epoch + 1} "
                f"(bicubic {bicubic:.3f} dB), {nonzero_parameters(self.model)} non-zero parameters")


__all__ = ["CheckpointError", "Trainer", "archive", "arch_input_kind", "arch_of", "deterministic_cudnn", "dummy_input",
           "layer_sparsity", "nonzero_parameters"]
