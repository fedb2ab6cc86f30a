"""Several processes under torchrun: the process group, the rank's device, DDP wrapping, per-rank data, rank 0's outputs.

`torchrun --nproc_per_node=N train.py ...` starts N copies of the entry point with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `process_group(device)` joins them (gloo on CPU, nccl on
CUDA) and leaves a plain `python train.py` (no torchrun variables) untouched. Only rank 0 writes
(logs, TensorBoard, checkpoints); the other ranks log warnings only and wait for it at `barrier()`.
The reductions compression needs live in compress.distributed (compress never imports apputils).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from compress.distributed import active, all_reduce_sum_, global_min_max

from .execution_env import UserError

log = logging.getLogger(__name__)

#: Seconds a rank waits for the others to join, and at each collective (rank 0 alone may test or validate
#: meanwhile), before the job stops: torch's default.
DEFAULT_TIMEOUT_S = 1800.0
T = TypeVar("T")


@dataclass(frozen=True)
class Torchrun:
    """What torchrun told this process: its rank among world_size, its local rank on the node, the store."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: str

    @property
    def endpoint(self) -> str:
        """MASTER_ADDR:MASTER_PORT, the address every rank joins."""
        return f"{self.master_addr}:{self.master_port}"


def torchrun_env(environ: Mapping[str, str] | None = None) -> Torchrun | None:
    """The torchrun variables of `environ` (default os.environ); None when not started by torchrun."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    values: dict[str, int] = {}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = env.get(key, "0" if key == "LOCAL_RANK" else "")
        try:
            values[key] = int(text)
        except ValueError:
            raise UserError(f"environment variable {key}={text!r} is not an integer; start the job with torchrun, "
                            "which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT") from None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise UserError(f"RANK={values['RANK']} is not in [0, WORLD_SIZE={values['WORLD_SIZE']}); start the job "
                        "with torchrun")
    return Torchrun(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"],
                    env.get("MASTER_ADDR", "127.0.0.1"), env.get("MASTER_PORT", "29500"))


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, environ: Mapping[str, str] | None = None) -> torch.device:
    """`device` for this rank: under torchrun a bare 'cuda' becomes cuda:LOCAL_RANK."""
    run = torchrun_env(environ)
    if run is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", run.local_rank)


def init(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Torchrun | None:
    """Join torchrun's process group (backend from `device`); None (and nothing done) outside torchrun.

    A rank that cannot reach the others within `timeout_s` fails with a UserError naming the endpoint.
    """
    run = torchrun_env()
    if run is None or dist.is_initialized():
        return run
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=run.rank, world_size=run.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        dist.barrier()  # every rank is there: a missing one fails here, not in the first training step
    except (RuntimeError, ValueError, TimeoutError) as err:  # DistNetworkError / DistStoreError are RuntimeErrors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if dist.is_initialized():
            dist.destroy_process_group()
        raise UserError(f"rank {run.rank} of {run.world_size} could not join the process group at {run.endpoint} "
                        f"(backend {backend}, waited up to {timeout_s:g} s): {first}; check that every node can "
                        "reach that address and port (torchrun's --rdzv_endpoint / --master_addr, --master_port) "
                        "and that all ranks were started") from None
    quiet_other_ranks()
    log.info("process group: %d processes, backend %s, store %s", run.world_size, backend, run.endpoint)
    return run


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Torchrun | None]:
    """init() for the block, and the process group destroyed after it (when this block created it)."""
    created = not dist.is_initialized()
    run = init(device, timeout_s)
    try:
        yield run
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


class RankFailure(UserError):
    """Another rank of the job failed, or torchrun stopped this one: the job cannot go on."""


def _lost_peer(err: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (a torch DistError, or gloo's / NCCL's error)."""
    text = str(err)
    return isinstance(err, dist.DistError) or any(s in text for s in ("gloo", "NCCL", "Connection reset",
                                                                        "Connection closed"))


@contextlib.contextmanager
def stops_with_the_job(what_next: Callable[[], str]) -> Iterator[None]:
    """Under a process group of several processes, a rank that loses another (its collective fails) or is
    stopped by torchrun (SIGTERM: torchrun ends every rank when one fails) raises one RankFailure that says
    so and `what_next()` (e.g. the checkpoint to resume from), instead of a traceback or a silent end."""
    if not active():
        yield
        return
    where = f"rank {rank()} of {world_size()}"

    def stopped(signum: int, frame: Any) -> None:
        raise RankFailure(f"{where} was stopped by torchrun, which ends every rank when one fails (its report "
                          "names the failed rank and why)")

    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        yield
    except RankFailure as err:
        raise RankFailure(f"{err}; {what_next()}") from None
    except RuntimeError as err:
        if not _lost_peer(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RankFailure(f"{where} lost contact with another rank of the job, which has died or been stopped "
                          f"({first[:200]}); {what_next()}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes of the job (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes the run's outputs (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if active():
        dist.barrier()


def broadcast_object(value: T) -> T:
    """Rank 0's `value` on every rank (picklable plain data only: names, numbers, metric dicts)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value: T) -> list[T]:
    """Every rank's `value`, in rank order (picklable plain data only); [value] in one process."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def on_main(work: Callable[[], T]) -> T | None:
    """`work()` on rank 0 (its result there, None on the other ranks, which wait for it); a UserError raised by
    it is raised on every rank, so no rank waits for a rank 0 that has given up."""
    if not active():
        return work()
    result, error = None, None
    try:
        if is_main():
            result = work()
    except UserError as err:
        error = str(err)
        broadcast_object(error)
        raise
    error = broadcast_object(error)
    if error is not None:
        raise UserError(f"{error} (reported by rank 0)")
    return result


def average_gradients(module: nn.Module) -> None:
    """Mean of the parameters' gradients over the ranks, for a network trained without a DDP wrapper."""
    if not active():
        return
    n = world_size()
    for p in module.parameters():
        if p.grad is not None:
            all_reduce_sum_(p.grad).div_(n)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` inside DistributedDataParallel under a process group of several processes; `model` otherwise.

    Unused parameters are searched for only when the model has some that a forward pass may skip (learned
    activation clips of a quantizer that is not on yet).
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    skippable = any(name.rsplit(".", 1)[-1].startswith("clip_") for name, _ in model.named_parameters())
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=skippable)


def sync_bn_refusal(device_type: str) -> str:
    """Why --sync_bn cannot run on `device_type` and what to do instead."""
    return (f"--sync_bn needs CUDA devices (torch.nn.SyncBatchNorm runs on GPUs only), and this run is on "
            f"{device_type}: leave --sync_bn out (each process then normalises with its own batch's statistics, "
            "and DDP keeps the running statistics equal on every rank)")


def sync_batchnorm(model: nn.Module, device: torch.device) -> int:
    """Make every BatchNorm of `model` a SyncBatchNorm (statistics of the global batch), in place: the
    parameters and buffers stay the same tensors, so the optimizer, masks and quantizers keep them. Returns
    how many were converted. torch runs SyncBatchNorm on GPUs only: on another device this is a UserError."""
    if device.type != "cuda":
        raise UserError(sync_bn_refusal(device.type))
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the children in place
    return len(norms)


def sampler(dataset: Dataset, shuffle: bool = False, seed: int = 0) -> DistributedSampler | None:
    """The rank's share of `dataset` (rank r takes samples r, r + W, ...), None in one process.

    Without shuffling, step k of W processes with batch b sees samples k*W*b .. (k+1)*W*b - 1 between them:
    the samples of step k of one process with batch W*b.
    """
    if not active():
        return None
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed,
                              drop_last=True)


class _RankFilter(logging.Filter):
    """Prefixes records with the rank."""

    def __init__(self, rank_: int):
        super().__init__()
        self.prefix = f"[rank {rank_}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_rank_prefixed", False):
            record.msg = f"{self.prefix}{record.msg}"
            record._rank_prefixed = True  # type: ignore[attr-defined]
        return True


def quiet_other_ranks() -> None:
    """On ranks other than 0: the console shows warnings and errors only, each prefixed with the rank."""
    if is_main():
        return
    prefix = _RankFilter(rank())
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
        handler.addFilter(prefix)


__all__ = ["DEFAULT_TIMEOUT_S", "Torchrun", "active", "all_gather_object", "all_reduce_sum_", "average_gradients", "backend_for", "barrier",
           "broadcast_object", "global_min_max", "init", "is_main", "on_main", "process_group", "rank", "rank_device",
           "sampler", "torchrun_env", "world_size", "wrap"]
