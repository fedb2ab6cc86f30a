"""apputils.distributed: torchrun's variables, joining (and failing to join) the group, rank-0-only work."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from apputils import distributed
from apputils.execution_env import UserError
from tests.distributed_runs import free_port, run_ranks


def test_no_torchrun_variables_means_one_process():
    assert distributed.torchrun_env({}) is None
    assert distributed.init(torch.device("cpu")) is None or not dist.is_initialized()
    assert distributed.world_size() == 1 and distributed.is_main()
    model = nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
    assert distributed.sampler(list(range(4))) is None
    assert distributed.on_main(lambda: 7) == 7


def test_torchrun_variables_are_read_and_checked():
    run = distributed.torchrun_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                                    "MASTER_PORT": "29511"})
    assert run == distributed.Torchrun(1, 4, 1, "node7", "29511") and run.endpoint == "node7:29511"
    with pytest.raises(UserError, match="WORLD_SIZE='two' is not an integer"):
        distributed.torchrun_env({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(UserError, match=r"RANK=4 is not in \[0, WORLD_SIZE=4\)"):
        distributed.torchrun_env({"RANK": "4", "WORLD_SIZE": "4"})
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert distributed.rank_device(torch.device("cuda"), env) == torch.device("cuda", 1)
    assert distributed.rank_device(torch.device("cpu"), env) == torch.device("cpu")
    assert distributed.rank_device(torch.device("cuda"), {}) == torch.device("cuda")


def test_unreachable_rendezvous_is_one_user_error_naming_the_endpoint(monkeypatch):
    port = free_port()  # nothing listens there: rank 1 waits for a store that never comes
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    with pytest.raises(UserError, match=rf"rank 1 of 2 could not join the process group at 127\.0\.0\.1:{port}"):
        distributed.init(torch.device("cpu"), timeout_s=2)
    assert not dist.is_initialized()


def _rank_work(rank: int, folder: str) -> dict:
    from pathlib import Path

    written = distributed.on_main(lambda: Path(folder, "only_rank0.txt").write_text("x"))
    seen = sorted(Path(folder).iterdir())  # on_main returned: rank 0's file is there for every rank
    try:
        distributed.on_main(lambda: (_ for _ in ()).throw(UserError("disk full")))
        error = None
    except UserError as err:
        error = str(err)
    shares = list(iter(distributed.sampler(list(range(8)))))
    grads = nn.Linear(1, 1, bias=False)
    grads.weight.grad = torch.full((1, 1), float(rank + 1))
    distributed.average_gradients(grads)
    return {"written": written, "seen": [p.name for p in seen], "error": error, "shares": shares,
            "name": distributed.broadcast_object(f"run-of-rank-{rank}"), "grad": float(grads.weight.grad)}


def test_rank_zero_writes_and_its_errors_reach_every_rank(tmp_path):
    r0, r1 = run_ranks(_rank_work, str(tmp_path))
    assert r0["written"] == 1 and r1["written"] is None  # write_text's count on rank 0 only
    assert r0["seen"] == r1["seen"] == ["only_rank0.txt"]
    assert r0["error"] == "disk full" and r1["error"] == "disk full (reported by rank 0)"
    assert r0["shares"] == [0, 2, 4, 6] and r1["shares"] == [1, 3, 5, 7]  # step k: samples of one 2b batch
    assert r0["name"] == r1["name"] == "run-of-rank-0"
    assert r0["grad"] == r1["grad"] == 1.5


def _sensitivity(rank: int | None, sense_type: str, folder: str) -> list[dict]:
    from pathlib import Path

    from apputils.sensitivity import Evaluation, sensitivity_analysis
    from tests.apputils.test_sensitivity import Chain, data, mse_metrics

    torch.manual_seed(0)
    model = Chain()
    last = []  # the last conv runs once per batch for every evaluated (weight, level) pair, whatever it prunes
    model.c3.register_forward_hook(lambda *a: last.append(1))
    workbook = Path(folder, f"rank{rank}.xlsx")
    df = sensitivity_analysis(model, workbook, Evaluation(data((1, 12, 12)), mse_metrics), sense_type,
                              sparsities=[0.0, 0.3, 0.6], progress=False)
    return [{**row, "workbook": workbook.exists(), "forwards": len(last)} for row in df.to_dict("records")]


def test_sensitivity_shares_give_every_pair_to_one_rank_balanced_by_cost():
    from apputils.sensitivity.analysis import WeightWork, shares

    levels = [0.0, 0.3, 0.6, 0.9]
    work = [WeightWork(f"w{i}", levels, setup=0.5 * i, per_level=7.0 - i) for i in range(7)]
    everything = sorted((w.name, lv) for w in work for lv in levels)
    for world in (2, 3):
        out = shares(work, world)
        assert out == shares(work, world)  # the same split on every rank
        assert sorted(p for share in out for p in share) == everything  # each pair once
        loads = [sum(w.cost([lv for n, lv in share if n == w.name]) for w in work if any(n == w.name for n, _ in share))
                 for share in out]
        assert max(loads) - min(loads) <= max(w.cost(levels) for w in work) / 2  # within half the costliest weight
    two = shares(work, 2)
    assert all(sum(any(n == w.name for n, _ in share) for share in two) == 1 for w in work)  # whole weights: one set-up
    assert shares(work, 1) == [set(everything)]
    # one weight worth most of the work is cut into pieces; its free level 0 rides with the first piece
    big = [WeightWork("big", levels, 0.0, 100.0), WeightWork("small", levels, 0.0, 1.0)]
    split = shares(big, 2)
    assert all(any(n == "big" for n, _ in share) for share in split)
    assert sorted(p for share in split for p in share) == sorted((w.name, lv) for w in big for lv in levels)


@pytest.mark.parametrize("sense_type", ["element", "filter"])
def test_distributed_sensitivity_shares_the_pairs_and_gathers_the_table_of_one_process(sense_type, tmp_path):
    one = _sensitivity(None, sense_type, str(tmp_path))
    r0, r1 = run_ranks(_sensitivity, sense_type, str(tmp_path))
    def table(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in ("workbook", "forwards")} for row in rows]

    assert table(r0) == table(one) and table(r1) == table(one)
    assert max(r0[0]["forwards"], r1[0]["forwards"]) < one[0]["forwards"]  # each rank ran its share only
    assert r0[0]["workbook"] and not r1[0]["workbook"]  # rank 0 writes the workbook


PACT_FROM_EPOCH_1 = {
    "quantizers": {"q": {"class": "PACTQuantizer", "bits_activations": 4, "bits_weights": 4,
                         "act_clip_init_val": 2.0}},
    "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 1, "ending_epoch": 3, "frequency": 1}],
}


def _pact_wrapped(rank: int) -> dict:
    import compress
    from tests.compress.test_ddp import Net, batch

    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = compress.dict_config(model, optimizer, PACT_FROM_EPOCH_1)
    net = distributed.wrap(model, torch.device("cpu"))  # the clips are unused until epoch 1
    for epoch in range(2):
        sched.on_epoch_begin(epoch, optimizer)
        for i in range(2):
            x, y = batch(rank, epoch, i)
            loss = nn.functional.mse_loss(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sched.on_minibatch_end(epoch, i, 2, optimizer)
        sched.on_epoch_end(epoch, optimizer)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_learned_clips_not_used_yet_do_not_stop_ddp_and_end_equal_on_every_rank():
    r0, r1 = run_ranks(_pact_wrapped)
    clips = [k for k in r0 if k.endswith("clip_hi")]
    assert clips and any(float(r0[k]) != 2.0 for k in clips)  # trained once quantization was on
    for key, value in r0.items():
        torch.testing.assert_close(r1[key], value, rtol=0, atol=0, msg=key)


def _lose_the_other_rank(rank: int) -> list[str]:
    import os
    import signal
    import time

    if rank == 1:
        return []  # leaves at once: its process ends while rank 0 still reduces
    messages = []
    with pytest.raises(distributed.RankFailure) as stopped:  # torchrun's SIGTERM, when another rank failed
        with distributed.stops_with_the_job(lambda: "resume from X"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
    messages.append(str(stopped.value))
    with pytest.raises(distributed.RankFailure) as lost:
        with distributed.stops_with_the_job(lambda: "resume from X"):
            for _ in range(100_000):
                dist.all_reduce(torch.ones(8))
    messages.append(str(lost.value))
    return messages


def test_a_lost_rank_or_torchruns_stop_is_one_message_with_what_to_do_next():
    stopped, lost = run_ranks(_lose_the_other_rank)[0]
    assert stopped == ("rank 0 of 2 was stopped by torchrun, which ends every rank when one fails (its report "
                       "names the failed rank and why); resume from X")
    assert lost.startswith("rank 0 of 2 lost contact with another rank of the job, which has died or been "
                           "stopped (") and lost.endswith("); resume from X")
    with distributed.stops_with_the_job(lambda: "unused"):  # one process: nothing changes
        pass


def test_sync_batchnorm_converts_in_place_keeping_the_tensors_and_is_refused_off_cuda():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    before = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    with pytest.raises(UserError, match=r"^--sync_bn needs CUDA devices .* this run is on cpu: leave --sync_bn out"):
        distributed.sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(model[1], nn.BatchNorm2d)  # refused: unchanged
    assert distributed.sync_batchnorm(model, torch.device("cuda", 0)) == 2  # converting needs no GPU
    assert type(model[1]) is nn.SyncBatchNorm and type(model[3][0]) is nn.SyncBatchNorm
    after = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def _kernels_chosen(rank: int) -> list[str]:
    from apputils.sensitivity import evaluators, tuning
    from tests.apputils.test_sensitivity import Chain

    # each rank measures something else: rank 1 finds the taps faster, rank 0 slower
    tuning.best_times = lambda functions, value, repeats: [1.0, 2.0] if rank == 1 else [2.0, 1.0]
    runner = evaluators.try_trace(Chain())
    tuning.choose_kernels(runner, torch.rand(1, 1, 12, 12))
    return sorted(node.name for node in runner.kernels)


def test_every_rank_runs_the_sensitivity_kernels_rank_0_chose():
    assert run_ranks(_kernels_chosen) == [[], []]  # rank 1's own timing would have chosen the taps
