"""The Deblur Trainer: DeblurGAN's training (generator + WGAN-GP PatchGAN critic, each with its own Adam)
with the compression scheduler's hooks on the generator, which is what is compressed and deployed.

Per minibatch, as DeblurGAN: the generator deblurs the batch; the critic takes `critic_iters` steps on
that batch (WGAN loss + gradient penalty); the generator then takes one step on content_weight x content
loss + adversarial loss. The scheduler's minibatch hooks wrap the generator's step. `--gan off` trains on
the content loss alone. The LR rises linearly over the run's first --warmup_iters generator steps, stays at
--lr, then falls linearly over the last --decay_epochs (as DeblurGAN's second half), unless the schedule has
its own LR schedulers for the generator.
"""
from __future__ import annotations

import argparse
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from apps.common.distillation import KD_TEACHER, rebuild_teacher, teacher_checkpoint
from apps.common.solver import AppTrainer
from apputils import distributed
from apputils.checkpoint import rebuild_model
from compress.modules import nonzero_parameters

from .evaluation import evaluate, mean_scores
from .losses import PerceptualLoss, gradient_penalty
from .models import PRESETS, build_critic, build_generator

log = logging.getLogger(__name__)

APP = "Deblur"


def generator_kwargs(opt: argparse.Namespace) -> dict[str, Any]:
    """The generator's constructor arguments: the --model preset, then --ngf / --n_blocks / --dropout / --norm."""
    kwargs = dict(PRESETS[opt.model])
    for key in ("ngf", "n_blocks", "dropout"):
        if getattr(opt, key) is not None:
            kwargs[key] = getattr(opt, key)
    kwargs["norm"] = opt.norm
    return kwargs


def arch_of(opt: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint's 'arch' record of the generator."""
    return {"name": "ResnetGenerator", "kwargs": generator_kwargs(opt)}


def critic_arch(opt: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint's 'arch' record of the critic (PatchGAN, 3 layers)."""
    return {"name": "NLayerDiscriminator", "kwargs": {"ndf": opt.ndf, "n_layers": 3, "norm": opt.norm}}


def dummy_input(device: torch.device | str = "cpu", side: int = 32) -> torch.Tensor:
    """A small RGB image for tracing the generator (structured pruning, thinning, reports)."""
    return torch.zeros(1, 3, side, side, device=device)


def lr_factor(epoch: int, epochs: int, decay_epochs: int | None) -> float:
    """DeblurGAN's LR curve: 1, then linearly down over the last `decay_epochs` (default: half the run)."""
    decay = epochs // 2 if decay_epochs is None else decay_epochs
    start = epochs - decay
    return 1.0 if epoch < start else 1.0 - (epoch - start + 1) / (decay + 1)


@contextmanager
def frozen(module: nn.Module):
    """`module`'s parameters take no gradient inside the block (the critic while the generator learns)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@dataclass
class Adversary:
    """The WGAN-GP critic and its optimizer: trains on (sharp, deblurred) batches, scores the generator."""

    critic: nn.Module
    optimizer: torch.optim.Optimizer
    iters: int = 5
    gp_weight: float = 10.0

    def train_critic(self, sharp: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """`iters` critic steps on this batch (WGAN loss + gradient penalty); its last losses."""
        fake = fake.detach()
        for _ in range(self.iters):
            distance = self.critic(sharp).mean() - self.critic(fake).mean()
            penalty = gradient_penalty(self.critic, sharp, fake)
            loss = -distance + self.gp_weight * penalty
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(self.critic)  # under torchrun: the same step on every rank
            self.optimizer.step()
        return {"critic": float(loss.detach()), "wasserstein": float(distance.detach()),
                "gradient_penalty": float(penalty.detach())}

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """The adversarial loss of the generator: minus the critic's mean score (the critic is not updated)."""
        with frozen(self.critic):
            return -self.critic(fake).mean()


def adam(model: nn.Module, lr: float, adversarial: bool) -> torch.optim.Optimizer:
    """DeblurGAN's Adam (beta1 0.5) for adversarial training; Adam's default betas without a critic."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999) if adversarial else (0.9, 0.999))


class Trainer(AppTrainer):
    """Trains a DeblurGAN generator (and its critic): `Trainer(config, training_loader, validation_loader).run()`."""

    APP = APP
    BASELINE = "blurred"

    def __init__(self, config: argparse.Namespace, training_loader: Any, validation_loader: Any):
        super().__init__(config, training_loader, validation_loader)
        self.arch: dict[str, Any] = {}
        self.adversary: Adversary | None = None
        self.content_loss: nn.Module | None = None

    # -- model ------------------------------------------------------------------------------------
    def _adam(self, model: nn.Module) -> torch.optim.Optimizer:
        return adam(model, self.lr, self.opt.gan != "off")

    def _adversary(self, critic: nn.Module, optimizer: torch.optim.Optimizer) -> Adversary:
        return Adversary(critic, optimizer, self.opt.critic_iters, self.opt.gp_weight)

    def teachers(self) -> dict[str, nn.Module]:
        """{KD_TEACHER: the --kd_teacher checkpoint's generator} for the schedule's distillers ({} without one),
        rebuilt as the checkpoint's schedule left it (thinned, quantized)."""
        path = self.opt.kd_teacher
        if not path:
            return {}
        ckpt = teacher_checkpoint(path, APP)
        return {KD_TEACHER: rebuild_teacher(ckpt, build_generator, path, self.device, dummy_input(self.device))}

    def build_model(self) -> None:
        """Generator (+ scheduler), critic, both optimizers and the content loss; restored when resuming."""
        self.content_loss = (PerceptualLoss.from_file(self.opt.perceptual_weights).to(self.device)
                             if self.opt.perceptual_weights else nn.L1Loss())
        teachers = self.teachers()
        if self.opt.resume:
            ckpt = self.load_resume()
            self.arch = ckpt["arch"]
            self.model, self.compression_scheduler, self.optimizer = rebuild_model(
                ckpt, build_generator, optimizer_factory=self._adam, device=self.device,
                dummy_input=dummy_input(self.device), teachers=teachers)
            record = (ckpt.get("networks") or {}).get("critic")
            if record is not None:
                critic, _, optimizer = rebuild_model(record, build_critic, optimizer_factory=self._adam,
                                                     device=self.device)
                self.adversary = self._adversary(critic, optimizer)
            self.restore_progress(ckpt)
            return
        torch.manual_seed(self.opt.seed)
        start = self.new_model(build_generator, arch_of(self.opt), dummy_input(self.device))
        self.arch = start["arch"] if start else arch_of(self.opt)
        self.optimizer = self._adam(self.model)
        if self.opt.gan != "off":
            self.adversary = self._adversary(*self._new_critic(start))
        elif start and (start.get("networks") or {}).get("critic"):
            log.info("--load_weights: the checkpoint's critic is not used (--gan off)")
        if self.opt.compress:
            import compress

            self.compression_scheduler = compress.file_config(self.model, self.optimizer, self.opt.compress,
                                                              dummy_input=dummy_input(self.device), teachers=teachers)

    def _new_critic(self, start: dict[str, Any] | None) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A new run's critic and its optimizer: with --load_weights the checkpoint's critic when it has one (it
        knows the loaded generator's outputs; a fresh one would first push the trained generator around),
        else a fresh one."""
        record = (start.get("networks") or {}).get("critic") if start else None
        if record is not None:
            critic, _, _ = rebuild_model(record, build_critic, device=self.device)
            log.info("--load_weights: the critic comes from the checkpoint too (new optimizer)")
        else:
            arch = critic_arch(self.opt)
            critic = build_critic(arch["name"], arch["kwargs"]).to(self.device)
            if start:
                log.info("--load_weights: the checkpoint has no critic (trained with --gan off): the critic starts "
                         "fresh")
        return critic, self._adam(critic)

    def _set_lr(self, epoch: int) -> None:
        """The LR of this epoch (and of this step, while warming up) for the critic, and for the generator
        unless the schedule drives its LR."""
        factor = lr_factor(epoch, self.opt.nEpochs, self.opt.decay_epochs)
        if self.global_step < self.opt.warmup_iters:
            factor *= (self.global_step + 1) / self.opt.warmup_iters
        sched = self.compression_scheduler
        optimizers = [self.adversary.optimizer if self.adversary is not None else None]
        if sched is None or not sched.schedule.get("lr_schedulers"):
            optimizers.append(self.optimizer)
        for optimizer in optimizers:
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr * factor

    # -- one epoch --------------------------------------------------------------------------------
    def train(self, epoch: int, compression_scheduler: Any = None) -> float:
        """One epoch over the training loader with the scheduler's hooks; returns the mean generator loss."""
        model, sched = self.model, compression_scheduler
        model.train()
        if self.adversary is not None:
            self.adversary.critic.train()
        self._set_lr(epoch)
        n = len(self.training_loader)
        total = 0.0
        bar = self.epoch_bar(epoch)
        for i, batch in enumerate(bar):
            blur, sharp = batch["blur"].to(self.device), batch["sharp"].to(self.device)
            if 0 < self.global_step <= self.opt.warmup_iters:
                self._set_lr(epoch)
            if sched is not None:
                sched.on_minibatch_begin(epoch, i, n, self.optimizer)
            fake = self.net(blur)
            terms = {"content": self.content_loss(fake, sharp)}
            logged: dict[str, float] = {}
            if self.adversary is not None:
                logged = self.adversary.train_critic(sharp, fake)
                terms["adversarial"] = self.adversary.generator_loss(fake)
            loss = self.opt.content_weight * terms["content"] + terms.get("adversarial", 0.0)
            value, parts = self.optimizer_step(epoch, i, n, loss, sched)
            total += value
            self.log_step(bar, epoch, i, n, value,
                          {**logged, **{k: float(v.detach()) for k, v in {**terms, **parts}.items()}})
        bar.close()
        return total / max(n, 1)

    def validate(self) -> dict[str, float]:
        """Mean RGB PSNR / SSIM / MSE of the generator on the validation images (and the blurred input's)."""
        return mean_scores(evaluate(self.model, self.validation_loader, self.device))

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Generator, its optimizer and the schedule, plus the critic with its optimizer under 'networks'."""
        networks = {}
        if self.adversary is not None:
            networks["critic"] = {"arch": critic_arch(self.opt), "model": self.adversary.critic.state_dict(),
                                  "optimizer": self.adversary.optimizer.state_dict()}
        return {**self.progress(), "arch": self.arch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "networks": networks}

    # -- logs -------------------------------------------------------------------------------------
    def describe(self) -> str:
        """Generator, critic, losses, schedule and device."""
        kwargs = ", ".join(f"{k}={v}" for k, v in self.arch["kwargs"].items())
        params = sum(p.numel() for p in self.model.parameters())
        critic = (f"PatchGAN critic (ndf {self.opt.ndf}), WGAN-GP x{self.opt.critic_iters}"
                  if self.adversary is not None else "no critic (--gan off)")
        content = "VGG19 conv3_3" if self.opt.perceptual_weights else "L1"
        return (f"generator {self.opt.model} ({kwargs}): {params} parameters; {critic}; content loss {content} "
                f"x{self.opt.content_weight:g}; schedule {self.opt.compress or 'none (dense)'}; device {self.device}")

    def headline(self) -> str:
        """Best validation PSNR, the blurred input's, non-zero generator parameters."""
        last = self.history[-1] if self.history else {}
        blurred = last.get("blurred_psnr", math.nan)
        return (f"best validation PSNR {self.best_metric:.3f} dB at epoch {self.best_epoch + 1} "
                f"(blurred input {blurred:.3f} dB), {nonzero_parameters(self.model)} non-zero generator parameters")


__all__ = ["Adversary", "Trainer", "adam", "arch_of", "critic_arch", "dummy_input", "generator_kwargs", "lr_factor"]
