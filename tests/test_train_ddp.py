"""train.py under torchrun (2 CPU processes, gloo): one run folder and one set of checkpoints, written by rank 0;
the run resumes in 1 process and again in 2; a killed rank stops the job, which resumes from its checkpoint."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.app_runs import AGP, ENV, ROOT, TINY, load, run_app, small_validation_set


def torchrun(cwd, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 train.py ARGS` (--standalone: a free port of its own)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def test_two_processes_make_one_run_that_resumes_in_one_process_and_in_two(tmp_path):
    small_validation_set(tmp_path)
    (tmp_path / "agp.yaml").write_text(AGP)
    r = torchrun(tmp_path, "--optform=SR", "--compress=agp.yaml", "--nEpochs", "2", "--save", "ddp", "--scale_lr",
                 "--lr", "0.001", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ddp"]  # nothing archived
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["ddp"]
    assert sorted(p.name for p in (tmp_path / "checkpoints/ddp").iterdir()) == ["best.pth", "latest.pth"]
    assert r.stdout.count("run ddp: ") == 1  # rank 0 prints, the other rank is quiet
    log = (tmp_path / "logs/ddp/ddp.log").read_text()
    assert "2 processes (DDP, backend gloo): per-process batch 4, global batch 8" in log
    assert log.count("epoch 2/2  loss") == 1
    ck = load(tmp_path / "checkpoints/ddp/latest.pth")
    assert ck["epoch"] == 1 and ck["world_size"] == 2
    assert ck["optimizer"]["param_groups"][0]["lr"] == 0.002  # --scale_lr: --lr x 2 processes
    assert not any(k.startswith("module.") for k in ck["model"])  # the model, not its DDP wrapper

    r = run_app(tmp_path, "train.py", "--optform=SR", "--resume", "checkpoints/ddp/latest.pth", "--nEpochs", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "logs/ddp/ddp.log").read_text()
    assert "written by a run of 2 process(es) and this run has 1: the global batch changes from 8 to 4" in log
    ck = load(tmp_path / "checkpoints/ddp/latest.pth")
    assert ck["epoch"] == 2 and ck["optimizer"]["param_groups"][0]["lr"] == 0.001

    r = torchrun(tmp_path, "--optform=SR", "--resume", "checkpoints/ddp/latest.pth", "--nEpochs", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "logs/ddp/ddp.log").read_text()
    assert "written by a run of 1 process(es) and this run has 2: the global batch changes from 4 to 8" in log
    ck = load(tmp_path / "checkpoints/ddp/latest.pth")
    assert ck["epoch"] == 3 and ck["world_size"] == 2 and len(ck["history"]) == 4
    assert ck["optimizer"]["param_groups"][0]["lr"] == 0.002
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ddp"]


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (a child of `parent` whose environment says RANK=rank)."""
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
    return None


@pytest.mark.slow  # about a minute: a 2-process run up to its first checkpoint, then a 1-process resume
def test_a_killed_rank_stops_the_job_and_the_run_resumes_from_its_last_checkpoint(tmp_path):
    small_validation_set(tmp_path)
    args = ["--optform=SR", "--nEpochs", "50", "--save", "k", *TINY]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp_path / "checkpoints/k/latest.pth"
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    pid = rank_pid(proc.pid, 1)
    assert pid is not None and proc.poll() is None, "the run ended before a rank could be killed"
    os.kill(pid, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=60)  # stops instead of waiting for the dead rank
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "rank      : 1" in err and "Signal 9 (SIGKILL)" in err  # torchrun's report: which rank, why
    ours = [line for line in err.splitlines() if line.startswith("error: rank 0 of 2 ")]
    assert len(ours) == 1 and ("lost contact with another rank" in ours[0] or "stopped by torchrun" in ours[0])
    assert ours[0].endswith("continue with `torchrun ... train.py --resume checkpoints/k/latest.pth`")
    assert "apps/common" not in err and "solver.py" not in err  # no traceback of ours (torchrun prints its own)
    epoch = int(load(latest)["epoch"])
    r = run_app(tmp_path, "train.py", "--optform=SR", "--resume", "checkpoints/k/latest.pth", "--nEpochs",
                str(epoch + 2))
    assert r.returncode == 0, r.stderr[-3000:]
    assert load(latest)["epoch"] == epoch + 1


@pytest.mark.slow  # about 40 s: a 1-epoch run, then test.py --reports in 1 and in 2 processes
def test_reports_under_torchrun_give_the_sensitivity_table_of_one_process(tmp_path):
    small_validation_set(tmp_path)
    (tmp_path / "agp.yaml").write_text(AGP)
    r = run_app(tmp_path, "train.py", "--optform=SR", "--compress=agp.yaml", "--nEpochs", "1", "--save", "t", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    args = ["--model=checkpoints/t/best.pth", "--reports", "--testdata", "val"]
    one = run_app(tmp_path, "test.py", "--optform=SR", *args, "--save", "one")
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "test.py"), "--optform=SR", *args, "--save", "two"]
    two = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("results/two") == one.stdout.count("results/one") > 0  # rank 0 prints, once
    sense = "reports/sense_file.csv"
    assert (tmp_path / "results/two" / sense).read_text() == (tmp_path / "results/one" / sense).read_text()
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["one", "two"]


def test_sync_bn_on_cpu_processes_is_one_message_before_training(tmp_path):
    small_validation_set(tmp_path)
    r = torchrun(tmp_path, "--optform=Deblur", "--norm", "batch", "--sync_bn", "--nEpochs", "1", "--save", "s",
                 "--iters_per_epoch", "2", "--batchSize", "2")
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith("error: --sync_bn needs CUDA devices")]
    assert len(ours) == 2, r.stderr[-3000:]  # each rank says it and stops; nothing was trained or saved
    assert not (tmp_path / "checkpoints/s/latest.pth").exists()


def test_sync_bn_on_the_cpu_is_refused_before_the_run_starts_in_one_process_too(tmp_path):
    r = run_app(tmp_path, "train.py", "--optform=SR", "--sync_bn", "--device", "cpu", "--save", "s")
    assert r.returncode == 2 and r.stderr.count("error: --sync_bn needs CUDA devices") == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "checkpoints").exists()
