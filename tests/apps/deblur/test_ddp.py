"""The Deblur critic under DDP (2 CPU processes, different batches): its gradients are averaged, so it stays
the same network on every rank."""
from __future__ import annotations

import torch

from apps.deblur.models import NLayerDiscriminator
from apps.deblur.solver import Adversary, adam
from tests.distributed_runs import run_ranks


def _critic_after_steps(rank: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    critic = NLayerDiscriminator(ndf=4)
    adversary = Adversary(critic, adam(critic, 1e-3, True), iters=2)
    g = torch.Generator().manual_seed(rank)
    sharp, fake = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    adversary.train_critic(sharp, fake)
    return {k: v.clone() for k, v in critic.state_dict().items()}


def test_the_critic_is_the_same_on_every_rank_after_its_steps():
    r0, r1 = run_ranks(_critic_after_steps)
    start = NLayerDiscriminator(ndf=4)
    for key, value in r0.items():
        torch.testing.assert_close(r1[key], value, rtol=0, atol=0, msg=key)
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in r0.items())
