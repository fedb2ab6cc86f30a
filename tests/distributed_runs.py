"""Running a function in 2 CPU processes joined by a gloo process group (shared by the DDP tests).

The processes come from a fork server (started once, without the threads a test may have started, with
torch and compress imported), so they start safely and in a fraction of a second.
"""
from __future__ import annotations

import io
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port nothing listens on now (each test joins its own store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, results: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        buffer = io.BytesIO()  # tensors as bytes: the queue would share their memory with an exiting process
        torch.save(fn(rank, *args), buffer)
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # noqa: BLE001 - the parent reports any failure of a rank
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], *args: Any, world: int = 2, timeout: float = 120) -> list[Any]:
    """[fn(rank, *args) for each rank], each run in its own process inside a gloo group (fn: module level)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "compress", "tests.distributed_runs"])
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, fn, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        for _ in range(world):
            rank, status, value = results.get(timeout=timeout)
            if status == "error":
                raise AssertionError(f"rank {rank} failed:\n{value}")
            out[rank] = torch.load(io.BytesIO(value), weights_only=True)
    finally:  # after a failure the other rank may wait for the failed one: do not wait long for it
        for p in procs:
            p.join(timeout if len(out) == world else 1)
            if p.is_alive():
                p.kill()
                p.join()
    return [out[r] for r in range(world)]
