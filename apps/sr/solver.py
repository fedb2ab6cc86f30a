"""The SR Trainer: builds the model, runs the training loop with the compression scheduler's hooks,
validates, and keeps checkpoints/<run>/latest.pth and best.pth."""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from apputils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rebuild_model,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from apputils.execution_env import FILE_ONLY, RunEnv, UserError, log_env_info, setup_run

from .evaluation import evaluate, mean_scores, model_input, resolve_device
from .models import MODELS, build_model
from .teacher import OtherInputTeacher

log = logging.getLogger(__name__)

APP = "SR"
#: The name a schedule's distiller uses for the --kd_teacher model (`teacher: teacher`).
KD_TEACHER = "teacher"


def arch_of(opt: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint's 'arch' record for the options' model."""
    return {"name": opt.model, "kwargs": {"num_channels": 1, "upscale_factor": opt.upscale_factor}}


def arch_input_kind(name: str) -> str:
    """'bicubic' or 'lr': the input the architecture `name` takes."""
    if name not in MODELS:
        raise CheckpointError(f"the checkpoint's architecture '{name}' is unknown; valid: {', '.join(MODELS)}")
    return MODELS[name].INPUT_KIND


def dummy_input(scale: int, kind: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """A small input of the right kind, for tracing the graph (structured pruning, thinning, reports)."""
    side = 32 if kind == "bicubic" else 32 // scale or 1
    return torch.zeros(1, 1, side, side, device=device)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zero elements of every weight with more than one dimension."""
    return {name: float((p == 0).sum()) / p.numel() for name, p in model.named_parameters() if p.dim() > 1}


def nonzero_parameters(model: nn.Module) -> int:
    """Number of non-zero parameters (what pruning and thinning reduce)."""
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def archive(folder: Path) -> Path | None:
    """Move an existing run folder aside to <folder>_archived_<time> (BasicSR's habit); returns the new path."""
    if not folder.exists():
        return None
    target = folder.with_name(f"{folder.name}_archived_{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target = folder.with_name(f"{folder.name}_archived_{time.strftime('%Y%m%d-%H%M%S')}_{n}")
        n += 1
    try:
        folder.rename(target)
    except OSError as err:
        raise UserError(f"cannot move the earlier run '{folder}' aside to '{target}' ({err}); choose another "
                        f"--save") from err
    return target


@contextlib.contextmanager
def deterministic_cudnn(device: torch.device) -> Iterator[None]:
    """On CUDA, deterministic cuDNN kernels chosen without benchmarking while the block runs; the flags after.

    cuDNN's default kernels may sum gradients with atomics (a different order each run) and benchmark
    mode may pick other kernels in another process: a resumed run must repeat an uninterrupted one bit
    for bit (README), so only deterministic kernels, chosen the same way.
    """
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    log.info("cuDNN for this run: deterministic kernels, benchmark off (was deterministic=%s, benchmark=%s; "
             "restored when the run ends)", *saved)
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


class Trainer:
    """Trains an SR network on Y patches: `Trainer(config, training_loader, validation_loader).run()`.

    `best.pth` is the checkpoint with the fewest non-zero parameters and, among those, the best
    validation PSNR, so a compression run's best model is always a fully compressed one.
    """

    def __init__(self, config: argparse.Namespace, training_loader: DataLoader, validation_loader: DataLoader):
        self.opt = config
        self.training_loader = training_loader
        self.validation_loader = validation_loader
        self.device = resolve_device(config.device)
        self.model: nn.Module | None = None
        self.criterion: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.compression_scheduler: Any = None
        self.start_epoch = 0
        self.epoch = -1
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.best_key: tuple[int, float] | None = None
        self.global_step = 0
        self.env: RunEnv | None = None
        self.run_dir = Path(config.checkpoint_dir) / config.save
        self.history: list[dict[str, float]] = []

    # -- model ------------------------------------------------------------------------------------
    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.opt.lr)

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
        ckpt = load_checkpoint(path, APP)
        scale = int(ckpt["arch"]["kwargs"].get("upscale_factor", 2))
        if scale != self.opt.upscale_factor:
            raise UserError(f"--kd_teacher '{path}' is a x{scale} model and this run trains x{self.opt.upscale_factor}; "
                            "give a teacher trained for the same scale")
        kind = arch_input_kind(ckpt["arch"]["name"])
        teacher, _, _ = rebuild_model(ckpt, build_model, device=self.device,
                                      dummy_input=dummy_input(scale, kind, self.device))
        student_kind = MODELS[self.opt.model].INPUT_KIND
        log.info("distillation teacher '%s': %s from %s (epoch %s)", KD_TEACHER, ckpt["arch"]["name"], path,
                 ckpt.get("epoch"))
        return {KD_TEACHER: teacher.eval() if kind == student_kind else OtherInputTeacher(teacher, scale, student_kind)}

    def _check_teacher_used(self, teachers: dict[str, nn.Module]) -> None:
        sched = self.compression_scheduler
        if teachers and not any(getattr(p.component, "teacher_name", None) == KD_TEACHER for p in sched.policies):
            raise UserError(f"--kd_teacher was given but the schedule has no distiller with `teacher: {KD_TEACHER}`; "
                            "add a distillers section (see schedules/sr/kd_edsr_teacher.yaml) or leave --kd_teacher out")

    def build_model(self) -> None:
        """Model, loss (MSE), optimizer (Adam) and the compression scheduler; restored when resuming."""
        self.criterion = nn.MSELoss()
        teachers = self.teachers()
        if self.opt.resume:
            ckpt = load_checkpoint(self.opt.resume, APP)
            latest = self.run_dir / "latest.pth"
            if latest.exists() and latest.resolve() != Path(self.opt.resume).resolve():
                kept = latest.with_name(f"latest_before_resume_{time.strftime('%Y%m%d-%H%M%S')}.pth")
                shutil.copy2(latest, kept)  # resuming from an older file must not lose the newer one
                log.warning("resuming from %s: the run's newer %s was kept as %s", self.opt.resume, latest, kept)
            kind = arch_input_kind(ckpt["arch"]["name"])
            self.model, self.compression_scheduler, self.optimizer = rebuild_model(
                ckpt, build_model, optimizer_factory=self._optimizer, device=self.device,
                dummy_input=dummy_input(self.opt.upscale_factor, kind, self.device), teachers=teachers)
            self.epoch = int(ckpt["epoch"])
            self.start_epoch = self.epoch + 1
            self.best_metric = float(ckpt.get("best_metric", -math.inf))
            self.best_epoch = int(ckpt.get("best_epoch", -1))
            key = ckpt.get("best_key")
            self.best_key = (int(key[0]), float(key[1])) if key else None
            self.global_step = int(ckpt.get("global_step", 0))
            self.history = list(ckpt.get("history", []))
            if ckpt.get("rng"):
                set_rng_states(ckpt["rng"])
            log.info("resumed %s at the end of epoch %d (best PSNR %.3f dB at epoch %d)",
                     self.opt.resume, self.epoch, self.best_metric, self.best_epoch)
            return
        torch.manual_seed(self.opt.seed)
        self.model = build_model(self.opt.model, arch_of(self.opt)["kwargs"]).to(self.device)
        self.optimizer = self._optimizer(self.model)
        if self.opt.compress:
            import compress

            self.compression_scheduler = compress.file_config(self.model, self.optimizer, self.opt.compress,
                                                              dummy_input=self._dummy(self.model), teachers=teachers)
            self._check_teacher_used(teachers)

    # -- one epoch --------------------------------------------------------------------------------
    def train(self, epoch: int, compression_scheduler: Any = None) -> float:
        """One epoch over the training loader with the scheduler's hooks; returns the mean loss."""
        model, optimizer, sched = self.model, self.optimizer, compression_scheduler
        model.train()
        dataset = self.training_loader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        n = len(self.training_loader)
        total, count = 0.0, 0
        bar = tqdm(self.training_loader, total=n, desc=f"epoch {epoch + 1}/{self.opt.nEpochs}",
                   leave=False, dynamic_ncols=True, mininterval=0.5)
        for i, batch in enumerate(bar):
            if sched is not None:
                sched.on_minibatch_begin(epoch, i, n, optimizer)
            output = model(model_input(model, batch, self.device))
            loss = self.criterion(output, batch["hr"].to(self.device))
            parts: dict[str, torch.Tensor] = {}
            if sched is not None:
                loss, parts = sched.before_backward_pass(epoch, i, n, loss, optimizer, return_loss_components=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sched is not None:
                sched.before_parameter_optimization(epoch, i, n, optimizer)
            optimizer.step()
            if sched is not None:
                sched.on_minibatch_end(epoch, i, n, optimizer)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UserError(f"the training loss became {value} at epoch {epoch}, minibatch {i}; "
                                f"lower --lr (now {self.opt.lr}) or check the schedule's regularizers")
            total += value
            count += 1
            self.global_step += 1
            if i % self.opt.print_freq == 0 or i == n - 1:
                bar.set_postfix(loss=f"{value:.5f}")
                log.info("epoch %d [%d/%d] loss %.6f", epoch, i + 1, n, value, extra=FILE_ONLY)
                self.env.writer.add_scalar("train/loss", value, self.global_step)
                for key, term in parts.items():
                    self.env.writer.add_scalar(f"train/{key}", float(term.detach()), self.global_step)
        bar.close()
        return total / max(count, 1)

    def validate(self) -> dict[str, float]:
        """Mean PSNR / SSIM / loss on the validation images (and the bicubic baseline)."""
        scores = evaluate(self.model, self.validation_loader, self.device, self.opt.upscale_factor)
        return mean_scores(scores)

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict of the current state (see apputils/checkpoint.py for the contract)."""
        sched = self.compression_scheduler
        options = {k: v for k, v in vars(self.opt).items() if k != "given"}
        return {"format": 1, "app": APP, "arch": arch_of(self.opt),
                "model": self.model.state_dict(),
                "schedule": sched.schedule if sched is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                "best_metric": float(self.best_metric), "best_epoch": self.best_epoch,
                "best_key": list(self.best_key) if self.best_key else None,
                "global_step": self.global_step, "history": self.history,
                "options": options, "rng": rng_states(), "run": self.opt.save}

    def save(self, metrics: dict[str, float] | None = None) -> bool:
        """Write latest.pth, and best.pth when this epoch is the best so far; True if it was."""
        state = self.checkpoint()
        is_best = False
        if metrics is not None:
            key = (-nonzero_parameters(self.model), metrics["psnr"])
            if self.best_key is None or key > self.best_key:
                self.best_key, self.best_metric, self.best_epoch = key, metrics["psnr"], self.epoch
                state.update(best_metric=float(self.best_metric), best_epoch=self.best_epoch, best_key=list(key))
                is_best = True
        save_checkpoint(state, self.run_dir / "latest.pth")
        if is_best:
            save_checkpoint(state, self.run_dir / "best.pth")
        return is_best

    # -- main -------------------------------------------------------------------------------------
    def _log_epoch(self, epoch: int, train_loss: float, metrics: dict[str, float], seconds: float) -> None:
        w = self.env.writer
        lr = self.optimizer.param_groups[0]["lr"]
        sparsity = layer_sparsity(self.model)
        total = sum(float((p == 0).sum()) for p in self.model.parameters() if p.dim() > 1)
        size = sum(p.numel() for p in self.model.parameters() if p.dim() > 1)
        overall = total / max(size, 1)
        w.add_scalar("train/epoch_loss", train_loss, epoch)
        w.add_scalar("val/psnr", metrics["psnr"], epoch)
        w.add_scalar("val/ssim", metrics["ssim"], epoch)
        w.add_scalar("val/loss", metrics["loss"], epoch)
        w.add_scalar("val/bicubic_psnr", metrics["bicubic_psnr"], epoch)
        w.add_scalar("lr", lr, epoch)
        w.add_scalar("sparsity/total", overall, epoch)
        for name, value in sparsity.items():
            w.add_scalar(f"sparsity/{name}", value, epoch)
        w.flush()
        log.info("epoch %d/%d  loss %.5f  val PSNR %.3f dB (bicubic %.3f)  SSIM %.4f  lr %.2e  "
                 "weight sparsity %.1f%%  params %d  %.1fs", epoch + 1, self.opt.nEpochs, train_loss,
                 metrics["psnr"], metrics["bicubic_psnr"], metrics["ssim"], lr, 100 * overall,
                 nonzero_parameters(self.model), seconds)

    def start(self) -> RunEnv:
        """Where the run begins touching the disk: a new run moves an earlier run of its name aside, then
        the log and TensorBoard folder open (the moves are logged there)."""
        moved = [] if self.opt.resume else [
            (folder, archive(folder)) for folder in (self.run_dir, Path(self.opt.logdir) / self.opt.save)]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # now, not after the first epoch
        except OSError as err:
            raise UserError(f"cannot create the checkpoint folder '{self.run_dir}' ({err}); choose another "
                            f"--checkpoint_dir") from err
        self.env = setup_run(self.opt.save, self.opt.logdir)
        for folder, target in moved:
            if target is not None:
                log.warning("'%s' already existed: moved it to '%s'", folder, target)
        log.info("checkpoints of this run go to %s", self.run_dir)
        return self.env

    def run(self) -> dict[str, Any]:
        """Start, build, train all epochs (hooks in the order of DESIGN.md §2), validate and save each epoch."""
        self.start()
        try:
            with deterministic_cudnn(self.device):
                log_env_info()
                log.info("options: %s", {k: v for k, v in vars(self.opt).items() if k != "given"}, extra=FILE_ONLY)
                self.build_model()
                sched = self.compression_scheduler
                log.info("model %s x%d: %d parameters, schedule %s, device %s", self.opt.model,
                         self.opt.upscale_factor, sum(p.numel() for p in self.model.parameters()),
                         self.opt.compress or "none (dense)", self.device)
                if self.start_epoch >= self.opt.nEpochs:
                    log.info("the run already finished %d epochs (--nEpochs %d): nothing to train",
                             self.start_epoch, self.opt.nEpochs)
                for epoch in range(self.start_epoch, self.opt.nEpochs):
                    t0 = time.perf_counter()
                    if sched is not None:
                        sched.on_epoch_begin(epoch, self.optimizer)
                    train_loss = self.train(epoch, sched)
                    metrics = self.validate()
                    if sched is not None:
                        sched.on_epoch_end(epoch, self.optimizer, metrics=metrics)
                    self.epoch = epoch
                    self.history.append({"epoch": epoch, "train_loss": train_loss, **metrics})
                    self._log_epoch(epoch, train_loss, metrics, time.perf_counter() - t0)
                    self.save(metrics)
                return self.summary()
        finally:
            self.env.close()

    def summary(self) -> dict[str, Any]:
        """Where everything went and the best result."""
        last = self.history[-1] if self.history else {}
        return {"run": self.opt.save, "best": str(self.run_dir / "best.pth"),
                "latest": str(self.run_dir / "latest.pth"), "log": str(self.env.log_file),
                "tensorboard": str(self.env.folder), "best_epoch": self.best_epoch,
                "best_psnr": self.best_metric, "bicubic_psnr": last.get("bicubic_psnr"),
                "nonzero_params": nonzero_parameters(self.model)}


__all__ = ["CheckpointError", "Trainer", "archive", "arch_input_kind", "arch_of", "deterministic_cudnn", "dummy_input",
           "layer_sparsity", "nonzero_parameters"]
