"""Compress your own network in your own training loop with a YAML schedule.

    python examples/own_training_loop.py [schedules/examples/agp_prune.yaml]

A small denoising conv net learns on smooth random images while the schedule prunes it; the sparsity
summary is printed at the end.
"""
import sys

import torch
from torch import nn

import compress

torch.manual_seed(0)
torch.set_num_threads(2)
model = nn.Sequential()
model.add_module("head", nn.Conv2d(1, 16, 3, padding=1))
model.add_module("body", nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                       nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()))
model.add_module("tail", nn.Conv2d(16, 1, 3, padding=1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
schedule = sys.argv[1] if len(sys.argv) > 1 else "schedules/examples/agp_prune.yaml"
scheduler = compress.file_config(model, optimizer, schedule)

clean = nn.functional.interpolate(torch.rand(64, 1, 6, 6), size=24, mode="bilinear")  # smooth images
noisy = clean + 0.1 * torch.randn_like(clean)
batches = list(zip(noisy.split(16), clean.split(16), strict=True))
for epoch in range(8):
    scheduler.on_epoch_begin(epoch, optimizer)
    for i, (x, y) in enumerate(batches):
        scheduler.on_minibatch_begin(epoch, i, len(batches), optimizer)
        loss = nn.functional.mse_loss(model(x), y)
        loss, parts = scheduler.before_backward_pass(epoch, i, len(batches), loss, optimizer,
                                                     return_loss_components=True)
        optimizer.zero_grad()
        loss.backward()
        scheduler.before_parameter_optimization(epoch, i, len(batches), optimizer)
        optimizer.step()
        scheduler.on_minibatch_end(epoch, i, len(batches), optimizer)
    scheduler.on_epoch_end(epoch, optimizer)
    extra = "".join(f"  {k} {v.item():.5f}" for k, v in parts.items())
    print(f"epoch {epoch}  loss {loss.item():.5f}  sparsity {compress.model_sparsity(model):5.1f}%{extra}")

print(compress.sparsity_summary(model).round(3).to_string(index=False))
