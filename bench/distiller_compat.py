"""Runs Distiller's own example schedules, unchanged, through compress.file_config and the README's hook loop.

    python bench/distiller_compat.py --examples /path/to/distiller/examples [--only SUBSTRING] [--verbose]

For each YAML file under --examples (read at run time; none of them is part of this project), the bench
builds the network the file was written for (the `--arch` of the command line in its comments, else its file
name), with the parameter and module names of Distiller's model (tests/distiller_models.py; ImageNet networks
at a quarter or an eighth of their width, CIFAR ResNets at their real size), wraps it as Distiller's
`create_model` does (nn.DataParallel around the model, or around `features` for AlexNet / VGG), calls
`compress.file_config(model, optimizer, path, dummy_input=...)` on the file as it is, and runs the README's hook
loop for every scheduled epoch on random data (2 minibatches of 2 images per epoch, SGD). A file that is a git
symlink stored as text (one line naming another YAML file) is followed. The working directory is the examples'
`classifier_compression` folder, where Distiller's sample application runs, so relative paths inside the files
resolve as they do there.

Each file is classified:
  run       every scheduled epoch ran;
  refused   file_config raised a ScheduleError (its one-line message is printed);
  failed    a compress error with a message, raised while training;
  crash     any other exception (its traceback is printed);
  diverged  every scheduled epoch ran, but some weight ended inf / NaN (random data, a 2-image batch);
  n/a       not a compression schedule for an image classifier: language models, Mask R-CNN, activation
            statistics files, AMC search configurations.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compress  # noqa: E402
from tests import distiller_models as dm  # noqa: E402

MINIBATCHES = 2
BATCH = 2
LR = 0.01
SECTIONS = {"version", "pruners", "regularizers", "quantizers", "lr_schedulers", "extensions", "policies"}

#: Distiller architecture name -> (builder, input side). ImageNet networks are narrowed and see 64x64 inputs (at
#: 32x32 their last stage is 1x1, and BatchNorm over a 2-image batch of 1x1 maps is degenerate); names are unchanged.
ARCHS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet20_cifar": (lambda: dm.resnet20_cifar(), 32),
    "resnet56_cifar": (lambda: dm.resnet56_cifar(), 32),
    "plain20_cifar": (lambda: dm.plain20_cifar(), 32),
    "preact_resnet20_cifar": (lambda: dm.preact_resnet20_cifar(), 32),
    "vgg16_cifar": (lambda: dm.vgg16_cifar(width=0.25), 32),
    "resnet18": (lambda: dm.resnet18(width=0.25, num_classes=10), 64),
    "resnet50": (lambda: dm.resnet50(width=0.25, num_classes=10), 64),
    "preact_resnet18": (lambda: dm.preact_resnet18(width=0.25, num_classes=10), 64),
    "alexnet": (lambda: dm.alexnet(width=0.125, num_classes=10), 64),
    "alexnet_bn": (lambda: dm.alexnet_bn(width=0.125, num_classes=10), 224),
    "vgg19": (lambda: dm.vgg19(width=0.125, num_classes=10), 64),
    "mobilenet": (lambda: dm.mobilenet(width=0.25, num_classes=10), 64),
    "resnext101_32x4d": (lambda: dm.resnext101_32x4d(width=0.25, num_classes=10), 64),
}
#: file-name keywords for files whose comments give no --arch (most specific first)
NAME_HINTS = [("preact_resnet18", "preact_resnet18"), ("preact_resnet", "preact_resnet20_cifar"),
              ("alexnet_bn", "alexnet_bn"), ("alexnet", "alexnet"), ("vgg16_cifar", "vgg16_cifar"),
              ("vgg19", "vgg19"), ("resnext101", "resnext101_32x4d"), ("mobilenet", "mobilenet"),
              ("plain20", "plain20_cifar"), ("resnet56", "resnet56_cifar"), ("resnet20", "resnet20_cifar"),
              ("resnet18", "resnet18"), ("resnet50", "resnet50")]
NOT_APPLICABLE = [("word_lang_model", "language model (word_language_model)"),
                  ("maskrcnn", "Mask R-CNN (object detection)")]


@dataclass
class Result:
    """The outcome of one file."""

    path: str
    status: str
    network: str = ""
    epochs: int = 0
    seconds: float = 0.0
    detail: str = ""


def read_followed(path: Path) -> tuple[str, Path]:
    """The file's text, following a git symlink stored as a one-line text file."""
    text = path.read_text(encoding="utf-8")
    target = text.strip()
    if "\n" not in target and target.endswith((".yaml", ".yml")) and (path.parent / target).is_file():
        return read_followed((path.parent / target).resolve())
    return text, path


def architecture(text: str, path: Path) -> str | None:
    """The --arch of the command line in the file's comments, else a keyword of its name."""
    m = re.search(r"(?:--arch|-a)[= ]+([a-z_0-9]+)", text)
    if m and m.group(1) in ARCHS:
        return m.group(1)
    return next((arch for key, arch in NAME_HINTS if key in path.name), None)


def not_applicable(data: object, path: Path) -> str | None:
    """Why a file is not an image-classifier compression schedule, or None."""
    for key, why in NOT_APPLICABLE:
        if key in path.name:
            return why
    if not isinstance(data, dict) or not set(data) & SECTIONS:
        if isinstance(data, dict) and "network" in data:
            return "AMC search-space configuration"
        if isinstance(data, dict) and all(isinstance(v, dict) and ("output" in v or "inputs" in v)
                                          for v in data.values()):
            return "activation statistics file"
        return "not a compression schedule"
    return None


def epochs_of(data: dict) -> int:
    """One past the last epoch any policy schedules (at least 1)."""
    last = 0
    for policy in data.get("policies") or []:
        if "epochs" in policy:
            last = max(last, max(policy["epochs"]) + 1)
        elif "ending_epoch" in policy:
            last = max(last, policy["ending_epoch"])
    return max(last, 1)


def wrap(model: nn.Module, arch: str) -> nn.Module:
    """nn.DataParallel as Distiller's create_model applies it."""
    if arch.startswith(("alexnet", "vgg")):
        model.features = nn.DataParallel(model.features)
        return model
    return nn.DataParallel(model)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: compress.CompressionScheduler,
          epochs: int, side: int) -> float:
    """The README's hook loop on random data; returns the last loss."""
    loss_value = 0.0
    for epoch in range(epochs):
        scheduler.on_epoch_begin(epoch, optimizer)
        for i in range(MINIBATCHES):
            x, y = torch.randn(BATCH, 3, side, side), torch.randint(0, 10, (BATCH,))
            scheduler.on_minibatch_begin(epoch, i, MINIBATCHES, optimizer)
            loss = scheduler.before_backward_pass(epoch, i, MINIBATCHES, F.cross_entropy(model(x), y), optimizer)
            optimizer.zero_grad()
            loss.backward()
            scheduler.before_parameter_optimization(epoch, i, MINIBATCHES, optimizer)
            optimizer.step()
            scheduler.on_minibatch_end(epoch, i, MINIBATCHES, optimizer)
            loss_value = float(loss.detach())
        scheduler.on_epoch_end(epoch, optimizer, metrics={"loss": loss_value})
    return loss_value


def summary(model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """Weight sparsity, parameter count, quantized layers and the final LR, in one line."""
    weights = [p for p in model.parameters() if p.dim() > 1]
    zeros = sum(int((p == 0).sum()) for p in weights)
    total = sum(p.numel() for p in weights)
    quantized = sum(compress.quantization.is_quantized(m) for m in model.modules())
    lr = optimizer.param_groups[0]["lr"]
    return (f"weights {zeros / total:.1%} zero, {sum(p.numel() for p in model.parameters())} params"
            f"{f', {quantized} quantized modules' if quantized else ''}, lr x{lr / LR:.3g}")


def run_file(path: Path, root: Path, verbose: bool, max_epochs: int | None = None) -> Result:
    rel = str(path.relative_to(root))
    text, real = read_followed(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return Result(rel, "n/a", detail=f"not YAML: {exc}")
    why = not_applicable(data, real)
    if why:
        return Result(rel, "n/a", detail=why)
    arch = architecture(text, real)
    if arch is None:
        return Result(rel, "n/a", detail="no network for this file")
    build, side = ARCHS[arch]
    torch.manual_seed(0)
    model = wrap(build(), arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    epochs = min(epochs_of(data), max_epochs or epochs_of(data))
    start = time.perf_counter()
    result = Result(rel, "run", arch, epochs)
    try:
        scheduler = compress.file_config(model, optimizer, real, dummy_input=torch.zeros(1, 3, side, side))
    except compress.ScheduleError as exc:
        result.status, result.detail = "refused", str(exc)
    except Exception:
        result.status, result.detail = "crash", traceback.format_exc()
    else:
        try:
            train(model, optimizer, scheduler, epochs, side)
            result.detail = summary(model, optimizer)
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                result.status = "diverged"
        except ValueError as exc:
            result.status = "failed" if type(exc).__module__.startswith("compress") else "crash"
            result.detail = str(exc) if result.status == "failed" else traceback.format_exc()
        except Exception:
            result.status, result.detail = "crash", traceback.format_exc()
    result.seconds = time.perf_counter() - start
    detail = result.detail if verbose or result.status == "crash" else result.detail.strip().splitlines()[-1]
    print(f"{result.status:8} {result.seconds:6.1f} s  {rel}: {detail}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=Path, required=True, help="Distiller's examples/ folder")
    parser.add_argument("--only", default="", help="run only files whose path contains this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="stop each file after this many epochs (a quick check; later policies do not run)")
    parser.add_argument("--verbose", action="store_true", help="print each result as it comes, and compress's log")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="  %(name)s: %(message)s")
    root = args.examples.resolve()
    files = sorted(p for p in root.rglob("*.yaml") if args.only in str(p.relative_to(root)))
    run_dir = root / "classifier_compression"
    cwd = Path.cwd()
    os.chdir(run_dir if run_dir.is_dir() else root)
    try:
        results = [run_file(path, root, args.verbose, args.max_epochs) for path in files]
    finally:
        os.chdir(cwd)
    print(f"\n{'result':8} {'network':18} {'epochs':>6} {'s':>6}  file: detail")
    for r in results:
        detail = r.detail.strip().splitlines()[-1] if r.status == "crash" else r.detail
        print(f"{r.status:8} {r.network:18} {r.epochs:6} {r.seconds:6.1f}  {r.path}: {detail}")
    counts = Counter(r.status for r in results)
    applicable = len(results) - counts["n/a"]
    print(f"\n{len(results)} files: " + ", ".join(f"{counts[k]} {k}" for k in ("run", "diverged", "refused", "failed",
                                                                              "crash", "n/a")))
    print(f"{counts['run']} of {applicable} applicable files run unchanged; "
          f"{sum(r.seconds for r in results):.0f} s in all")


if __name__ == "__main__":
    main()
