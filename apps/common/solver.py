"""The Trainer / Tester base classes every app derives from: the epoch loop with the compression
scheduler's hooks, latest / best checkpoints, resuming, logs, the results folder and the reports hand-over.

An app's Trainer implements `build_model`, `train(epoch, scheduler)`, `validate`, `checkpoint`,
`log_epoch`, `describe` and `headline`; its Tester implements `build_model`, `test(model, save_images)`,
`table`, `write_table` and `reports`. What runs around them (and what train.py / test.py print) is here.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from apps.common.load_weights import load_model, weights_checkpoint
from apputils import distributed
from apputils.checkpoint import base_record, load_checkpoint, rng_states, save_checkpoint, set_rng_states
from apputils.execution_env import FILE_ONLY, RunEnv, UserError, follow_run, log_env_info, setup_run
from compress.modules import nonzero_parameters

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is refused by the caller's options.
    Under torchrun a CUDA device is the rank's, cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return distributed.rank_device(torch.device(name))


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zero elements of every weight with more than one dimension."""
    return {name: float((p == 0).sum()) / p.numel() for name, p in model.named_parameters() if p.dim() > 1}


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


def score_table(title: str, baseline: str, model: str, rows: list[tuple[str, float, float, float, float]],
                mean: tuple[float, float, float, float]) -> str:
    """test.py's table: per image (name, baseline PSNR, SSIM, model PSNR, SSIM) and the mean, with the gain."""
    head = f"{'image':<16}{baseline + ' PSNR':>{len(baseline) + 7}}{'SSIM':>8}{model + ' PSNR':>{len(model) + 8}}" \
           f"{'SSIM':>8}{'gain dB':>9}"
    widths = (len(baseline) + 7, len(model) + 8)

    def line(name: str, bp: float, bs: float, p: float, s: float) -> str:
        return f"{name:<16}{bp:>{widths[0]}.3f}{bs:>8.4f}{p:>{widths[1]}.3f}{s:>8.4f}{p - bp:>+9.3f}"

    lines = [title, head, "-" * len(head), *(line(*r) for r in rows), "-" * len(head), line("mean", *mean)]
    return "\n".join(lines)


class AppTrainer:
    """Runs an app's training: `Trainer(config, training_loader, validation_loader).run()`.

    `self.model` is the network the schedule compresses and test.py deploys; `self.optimizer` trains it;
    `self.net` runs its training forward passes: `self.model` itself, or under torchrun its DDP wrapper.
    `best.pth` is the checkpoint with the fewest non-zero parameters of `self.model` and, among those,
    the best validation PSNR, so a compression run's best model is always a fully compressed one.
    """

    APP = ""
    #: What the validation metrics compare with (they hold f"{BASELINE}_psnr"), e.g. 'bicubic'.
    BASELINE = ""

    def __init__(self, config: argparse.Namespace, training_loader: DataLoader, validation_loader: DataLoader):
        self.opt = config
        self.training_loader = training_loader
        self.validation_loader = validation_loader
        self.device = resolve_device(config.device)
        self.model: nn.Module | None = None
        self.net: nn.Module | None = None
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
        #: the structure the run's weights started with (--load_weights), see apputils.checkpoint.base_record
        self.base: dict[str, Any] | None = None

    # -- what an app implements -------------------------------------------------------------------
    def build_model(self) -> None:
        """Build the networks, optimizers and compression scheduler; restore them when resuming."""
        raise NotImplementedError

    def train(self, epoch: int, compression_scheduler: Any = None) -> float:
        """One epoch over the training loader with the scheduler's hooks; returns the mean loss."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Mean validation metrics; 'psnr' ranks the checkpoints."""
        raise NotImplementedError

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict of the current state: `progress()` plus the app's networks."""
        raise NotImplementedError

    def log_epoch(self, epoch: int, train_loss: float, metrics: dict[str, float], seconds: float) -> None:
        """Loss, PSNR / SSIM (and the app's baseline's, `BASELINE`), LR and sparsity to TensorBoard; one line
        to the log."""
        w = self.env.writer
        lr = self.optimizer.param_groups[0]["lr"]
        baseline = f"{self.BASELINE}_psnr"
        w.add_scalar("train/epoch_loss", train_loss, epoch)
        for key in ("psnr", "ssim", "loss", baseline):
            w.add_scalar(f"val/{key}", metrics[key], epoch)
        w.add_scalar("lr", lr, epoch)
        overall = self.log_sparsity(epoch)
        w.flush()
        log.info("epoch %d/%d  loss %.5f  val PSNR %.3f dB (%s %.3f)  SSIM %.4f  lr %.2e  "
                 "weight sparsity %.1f%%  params %d  %.1fs", epoch + 1, self.opt.nEpochs, train_loss,
                 metrics["psnr"], self.BASELINE, metrics[baseline], metrics["ssim"], lr, 100 * overall,
                 nonzero_parameters(self.model), seconds)

    def describe(self) -> str:
        """One line on the model and the run, logged once it is built."""
        raise NotImplementedError

    def headline(self) -> str:
        """One line on the run's best result, printed by train.py after 'run <name>: '."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        """The learning rate to train with: --lr, times the number of processes with --scale_lr."""
        return self.opt.lr * (distributed.world_size() if getattr(self.opt, "scale_lr", False) else 1)

    def new_model(self, build: Callable[[str, dict[str, Any]], nn.Module], arch: dict[str, Any],
                  dummy_input: torch.Tensor | None = None) -> dict[str, Any] | None:
        """A new run's self.model: `arch` built with fresh weights, or with --load_weights that checkpoint's model
        (as its schedule left it); returns that checkpoint, else None."""
        path = getattr(self.opt, "load_weights", None)
        if not path:
            self.model = build(arch["name"], dict(arch["kwargs"])).to(self.device)
            return None
        ckpt = weights_checkpoint(path, self.APP)
        self.model = load_model(ckpt, build, path, self.device, dummy_input)
        self.base = base_record(ckpt)
        return ckpt

    # -- resuming ---------------------------------------------------------------------------------
    def load_resume(self) -> dict[str, Any]:
        """The --resume checkpoint; a newer latest.pth of the run is copied aside first, never lost."""
        ckpt = load_checkpoint(self.opt.resume, self.APP)
        distributed.on_main(self._keep_newer_latest)
        return ckpt

    def _keep_newer_latest(self) -> None:
        latest = self.run_dir / "latest.pth"
        if latest.exists() and latest.resolve() != Path(self.opt.resume).resolve():
            kept = latest.with_name(f"latest_before_resume_{time.strftime('%Y%m%d-%H%M%S')}.pth")
            shutil.copy2(latest, kept)  # resuming from an older file must not lose the newer one
            log.warning("resuming from %s: the run's newer %s was kept as %s", self.opt.resume, latest, kept)

    def restore_progress(self, ckpt: dict[str, Any]) -> None:
        """Epoch, best result, step count, history and random states of a checkpoint."""
        self.epoch = int(ckpt["epoch"])
        self.start_epoch = self.epoch + 1
        self.best_metric = float(ckpt.get("best_metric", -math.inf))
        self.best_epoch = int(ckpt.get("best_epoch", -1))
        key = ckpt.get("best_key")
        self.best_key = (int(key[0]), float(key[1])) if key else None
        self.global_step = int(ckpt.get("global_step", 0))
        self.history = list(ckpt.get("history", []))
        self.base = ckpt.get("base")
        if ckpt.get("rng"):
            set_rng_states(ckpt["rng"])
        log.info("resumed %s at the end of epoch %d (best PSNR %.3f dB at epoch %d)",
                 self.opt.resume, self.epoch, self.best_metric, self.best_epoch)
        saved, now = int(ckpt.get("world_size", 1)), distributed.world_size()
        if saved != now:
            log.warning("the checkpoint was written by a run of %d process(es) and this run has %d: the global batch "
                        "changes from %d to %d (per-process --batchSize %d)", saved, now, saved * self.opt.batchSize,
                        now * self.opt.batchSize, self.opt.batchSize)
            if getattr(self.opt, "scale_lr", False) and self.optimizer is not None:
                for group in self.optimizer.param_groups:
                    group["lr"] *= now / saved
                log.warning("--scale_lr: the learning rate is scaled by %d/%d to %.3g", now, saved,
                            self.optimizer.param_groups[0]["lr"])

    def progress(self) -> dict[str, Any]:
        """The checkpoint keys every app writes besides its networks (see apputils/checkpoint.py)."""
        sched = self.compression_scheduler
        options = {k: v for k, v in vars(self.opt).items() if k != "given"}
        return {"format": 1, "app": self.APP,
                "schedule": sched.schedule if sched is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "epoch": self.epoch, "best_metric": float(self.best_metric), "best_epoch": self.best_epoch,
                "best_key": list(self.best_key) if self.best_key else None,
                "global_step": self.global_step, "history": self.history,
                "options": options, "rng": rng_states(), "run": self.opt.save,
                "world_size": distributed.world_size(), "base": self.base}

    # -- the training loop's shared steps ----------------------------------------------------------
    def epoch_bar(self, epoch: int) -> tqdm:
        """The training batches of `epoch` (the data set's random crops of that epoch) behind a progress bar."""
        for part in (self.training_loader.dataset, self.training_loader.sampler):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        return tqdm(self.training_loader, total=len(self.training_loader), desc=f"epoch {epoch + 1}/{self.opt.nEpochs}",
                    leave=False, dynamic_ncols=True, mininterval=0.5, disable=not distributed.is_main())

    def optimizer_step(self, epoch: int, i: int, n: int, loss: torch.Tensor, sched: Any
                       ) -> tuple[float, dict[str, torch.Tensor]]:
        """self.optimizer's step on `loss` inside the scheduler's hooks (regularizer terms added, masks kept);
        returns the loss value and the schedule's loss terms. A loss that is not finite stops the run."""
        optimizer, parts = self.optimizer, {}
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
        self.global_step += 1
        return value, parts

    def log_step(self, bar: tqdm, epoch: int, i: int, n: int, value: float, terms: dict[str, float]) -> None:
        """Every --print_freq minibatches: the loss (and its terms) to the bar, the log file and TensorBoard."""
        if i % self.opt.print_freq and i != n - 1:
            return
        bar.set_postfix(loss=f"{value:.5f}")
        log.info("epoch %d [%d/%d] loss %.6f%s", epoch, i + 1, n, value,
                 "".join(f" {k} {v:.5f}" for k, v in terms.items()), extra=FILE_ONLY)
        self.env.writer.add_scalar("train/loss", value, self.global_step)
        for key, term in terms.items():
            self.env.writer.add_scalar(f"train/{key}", term, self.global_step)

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, metrics: dict[str, float] | None = None) -> bool:
        """Write latest.pth, and best.pth when this epoch is the best so far (rank 0; the others wait for it);
        True if it was."""
        state = self.checkpoint()
        is_best = False
        if metrics is not None:
            key = (-nonzero_parameters(self.model), metrics["psnr"])
            if self.best_key is None or key > self.best_key:
                self.best_key, self.best_metric, self.best_epoch = key, metrics["psnr"], self.epoch
                state.update(best_metric=float(self.best_metric), best_epoch=self.best_epoch, best_key=list(key))
                is_best = True

        def write() -> None:
            save_checkpoint(state, self.run_dir / "latest.pth")
            if is_best:
                save_checkpoint(state, self.run_dir / "best.pth")

        distributed.on_main(write)
        return is_best

    def log_sparsity(self, epoch: int) -> float:
        """Write the weight sparsity of self.model per layer and in total to TensorBoard; returns the total."""
        w = self.env.writer
        zeros = sum(float((p == 0).sum()) for p in self.model.parameters() if p.dim() > 1)
        size = sum(p.numel() for p in self.model.parameters() if p.dim() > 1)
        overall = zeros / max(size, 1)
        w.add_scalar("sparsity/total", overall, epoch)
        for name, value in layer_sparsity(self.model).items():
            w.add_scalar(f"sparsity/{name}", value, epoch)
        return overall

    # -- main -------------------------------------------------------------------------------------
    def start(self) -> RunEnv:
        """Where the run begins touching the disk: a new run moves an earlier run of its name aside, then
        the log and TensorBoard folder open (the moves are logged there). Under torchrun rank 0 does this
        and the other ranks follow once it is done."""
        env = distributed.on_main(self._open_run)
        self.env = env if env is not None else follow_run(self.opt.save, self.opt.logdir)
        return self.env

    def _open_run(self) -> RunEnv:
        moved = [] if self.opt.resume else [
            (folder, archive(folder)) for folder in (self.run_dir, Path(self.opt.logdir) / self.opt.save)]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # now, not after the first epoch
        except OSError as err:
            raise UserError(f"cannot create the checkpoint folder '{self.run_dir}' ({err}); choose another "
                            f"--checkpoint_dir") from err
        env = setup_run(self.opt.save, self.opt.logdir)
        for folder, target in moved:
            if target is not None:
                log.warning("'%s' already existed: moved it to '%s'", folder, target)
        log.info("checkpoints of this run go to %s", self.run_dir)
        return env

    def run(self) -> dict[str, Any]:
        """Start, build, train all epochs (hooks in the order of docs/architecture.md), validate and save each epoch."""
        self.start()
        try:
            with deterministic_cudnn(self.device):
                log_env_info()
                log.info("options: %s", {k: v for k, v in vars(self.opt).items() if k != "given"}, extra=FILE_ONLY)
                self.build_model()
                sched = self.compression_scheduler
                self.net = self.wrap_model(sched)
                log.info("%s", self.describe())
                if self.start_epoch >= self.opt.nEpochs:
                    log.info("the run already finished %d epochs (--nEpochs %d): nothing to train",
                             self.start_epoch, self.opt.nEpochs)
                with distributed.stops_with_the_job(self._resume_hint):
                    for epoch in range(self.start_epoch, self.opt.nEpochs):
                        t0 = time.perf_counter()
                        if sched is not None:
                            sched.on_epoch_begin(epoch, self.optimizer)
                        train_loss = self.train(epoch, sched)
                        metrics = distributed.broadcast_object(distributed.on_main(self.validate))
                        if sched is not None:
                            sched.on_epoch_end(epoch, self.optimizer, metrics=metrics)
                        self.epoch = epoch
                        self.history.append({"epoch": epoch, "train_loss": train_loss, **metrics})
                        self.log_epoch(epoch, train_loss, metrics, time.perf_counter() - t0)
                        self.save(metrics)
                return self.summary()
        finally:
            self.env.close()

    def _resume_hint(self) -> str:
        """What to do after the job stopped early: the checkpoint to resume from, if rank 0 wrote one."""
        latest = self.run_dir / "latest.pth"
        if not latest.is_file():
            return "no checkpoint was written yet: start the run again"
        return f"the last checkpoint is {latest}: continue with `torchrun ... train.py --resume {latest}`"

    def wrap_model(self, sched: Any) -> nn.Module:
        """self.model in DDP under torchrun (after the scheduler re-classed its layers), else self.model; the
        wrapper is rebuilt whenever the scheduler changes the model's structure (thinning)."""
        if getattr(self.opt, "sync_bn", False):
            converted = distributed.sync_batchnorm(self.model, self.device) if distributed.world_size() > 1 else 0
            log.info("--sync_bn: %d BatchNorm layer(s) use the global batch's statistics%s", converted,
                     "" if distributed.world_size() > 1 else " (one process: nothing to synchronise)")
        if distributed.world_size() == 1:
            return self.model
        log.info("%d processes (DDP, backend %s): per-process batch %d, global batch %d; rank 0 validates and "
                 "writes logs, TensorBoard and checkpoints", distributed.world_size(),
                 torch.distributed.get_backend(), self.opt.batchSize, self.opt.batchSize * distributed.world_size())
        if sched is not None:
            sched.add_model_listener(self._rewrap)
        return distributed.wrap(self.model, self.device)

    def _rewrap(self, model: nn.Module) -> None:
        self.net = None  # the old wrapper's gradient hooks on the parameters kept by thinning go with it
        gc.collect()
        self.net = distributed.wrap(model, self.device)
        log.info("the model changed (thinned to %d parameters): DDP wrapper rebuilt", sum(p.numel() for p in
                                                                                      model.parameters()))

    def summary(self) -> dict[str, Any]:
        """Where everything went and the best result (`headline`: the line train.py prints)."""
        return {"run": self.opt.save, "best": str(self.run_dir / "best.pth"),
                "latest": str(self.run_dir / "latest.pth"), "log": str(self.env.log_file),
                "tensorboard": str(self.env.folder), "best_epoch": self.best_epoch,
                "best_psnr": self.best_metric, "nonzero_params": nonzero_parameters(self.model),
                "headline": self.headline()}


class AppTester:
    """Tests a checkpoint: `Tester(config, testing_loader).run(config)` writes results/<run>/."""

    __test__ = False  # not a pytest test class (nor are the apps' Tester subclasses, which inherit this)

    APP = ""

    def __init__(self, config: argparse.Namespace, testing_loader: DataLoader):
        self.opt = config
        self.testing_loader = testing_loader
        self.device = resolve_device(config.device)
        self.model: nn.Module | None = None
        self.checkpoint: dict[str, Any] | None = None
        self.out_dir = Path(config.results_dir) / config.save
        self.scores: list[Any] = []

    # -- what an app implements -------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """Rebuild the deployed network from the checkpoint (thinning / quantization replayed)."""
        raise NotImplementedError

    def test(self, model: nn.Module, save_images: bool = False) -> dict[str, float]:
        """Mean metrics of `model` on the test images (kept per image in self.scores)."""
        raise NotImplementedError

    def table(self) -> str:
        """The per-image table of self.scores, as test.py prints it."""
        raise NotImplementedError

    def write_table(self) -> Path:
        """results/<run>/metrics.csv: one row per image and the mean."""
        raise NotImplementedError

    def reports(self, model: nn.Module) -> dict[str, Any]:
        """The --reports bundle (apputils.reports.write_reports) driven by the app's metrics."""
        raise NotImplementedError

    # -- main -------------------------------------------------------------------------------------
    def run(self, opt: argparse.Namespace | None = None) -> dict[str, Any]:
        """Build, test, write images and table; with --reports also the reports (apputils.reports).

        Under torchrun rank 0 tests and writes everything; the other ranks only take their share of the
        reports' sensitivity analysis (and return {})."""
        opt = opt or self.opt
        env = distributed.on_main(lambda: self._open_results(opt)) or follow_run(f"{opt.save}_test", opt.logdir)
        try:
            log_env_info()
            model = self.build_model()
            result = distributed.on_main(lambda: self._test(model, env)) or {}
            if opt.reports:
                reports = self.reports(model)
                if distributed.is_main():
                    result["reports"] = reports
            return result
        finally:
            env.close()

    def _open_results(self, opt: argparse.Namespace) -> RunEnv:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the results folder '{self.out_dir}' ({err}); choose another "
                            f"--results_dir") from err
        return setup_run(f"{opt.save}_test", opt.logdir)

    def _test(self, model: nn.Module, env: RunEnv) -> dict[str, Any]:
        """Test, table, metrics.csv and TensorBoard points: what test.py prints."""
        t0 = time.perf_counter()
        means = self.test(model, save_images=True)
        seconds = time.perf_counter() - t0
        table = self.table()
        for line in table.splitlines():
            log.info(line, extra=FILE_ONLY)
        csv_path = self.write_table()
        env.writer.add_scalar("test/psnr", means["psnr"], 0)
        env.writer.add_scalar("test/ssim", means["ssim"], 0)
        return {"table": table, "metrics": means, "csv": str(csv_path), "images": str(self.out_dir),
                "log": str(env.log_file), "seconds": seconds, "nonzero_params": nonzero_parameters(model)}
