"""The Deblur Tester: rebuilds a (possibly compressed) generator checkpoint, scores it against the blurred
input on whole RGB images, writes the deblurred images and the table, and optionally the reports."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from apps.common.metrics import psnr, ssim
from apps.common.solver import AppTester, score_table
from apputils.checkpoint import load_checkpoint, rebuild_model
from compress.modules import nonzero_parameters

from .evaluation import ImageScore, evaluate, mean_scores, rgb8
from .models import build_generator
from .solver import APP, dummy_input

log = logging.getLogger(__name__)


def format_table(scores: list[ImageScore]) -> str:
    """A plain-text table: one row per image and the mean, deblurred beside the blurred input."""
    m = mean_scores(scores)
    return score_table("deblurring, RGB PSNR / SSIM (8-bit values)", "blurred", "deblurred",
                       [(s.name, s.blurred_psnr, s.blurred_ssim, s.psnr, s.ssim) for s in scores],
                       (m["blurred_psnr"], m["blurred_ssim"], m["psnr"], m["ssim"]))


class Tester(AppTester):
    """Tests a deblurring checkpoint: `Tester(config, testing_loader).run(config)`."""

    APP = APP

    def build_model(self) -> nn.Module:
        """Rebuild the generator from the checkpoint (thinning / quantization replayed from its schedule)."""
        ckpt = load_checkpoint(self.opt.model, APP)
        self.model, _, _ = rebuild_model(ckpt, build_generator, device=self.device, dummy_input=dummy_input(self.device))
        self.model.eval()
        self.checkpoint = ckpt
        log.info("rebuilt %s %s from %s (epoch %d, schedule %s): %d non-zero parameters", ckpt["arch"]["name"],
                 ckpt["arch"]["kwargs"], self.opt.model, ckpt["epoch"], "yes" if ckpt.get("schedule") else "none",
                 nonzero_parameters(self.model))
        return self.model

    def _write_images(self, sample: dict[str, Any], deblurred: np.ndarray) -> None:
        name = sample["name"]
        Image.fromarray(deblurred.astype(np.uint8)).save(self.out_dir / f"{name}_deblurred.png")
        Image.fromarray(rgb8(sample["blur"]).astype(np.uint8)).save(self.out_dir / f"{name}_blurred.png")

    def test(self, model: nn.Module, save_images: bool = False) -> dict[str, float]:
        """Mean RGB PSNR / SSIM / MSE of `model` on the test images (also kept per image in self.scores)."""
        self.scores = evaluate(model, self.testing_loader, self.device,
                               on_image=self._write_images if save_images else None)
        return mean_scores(self.scores)

    def table(self) -> str:
        """The per-image table, deblurred beside the blurred input."""
        return format_table(self.scores)

    def write_table(self) -> Path:
        """results/<run>/metrics.csv: one row per image and the mean."""
        path = self.out_dir / "metrics.csv"
        rows = [(s.name, s.psnr, s.ssim, s.blurred_psnr, s.blurred_ssim, s.loss) for s in self.scores]
        m = mean_scores(self.scores)
        rows.append(("mean", m["psnr"], m["ssim"], m["blurred_psnr"], m["blurred_ssim"], m["loss"]))
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "psnr", "ssim", "blurred_psnr", "blurred_ssim", "mse"])
            for name, p, s, bp, bs, mse in rows:
                writer.writerow([name, f"{p:.4f}", f"{s:.5f}", f"{bp:.4f}", f"{bs:.5f}", f"{mse:.7f}"])
        return path

    def reports(self, model: nn.Module) -> dict[str, Any]:
        """Sensitivity / sparsity / MACs / ONNX / drawing reports into results/<run>/reports/.

        The sensitivity analysis is driven by the same RGB PSNR / SSIM as test(), handed over as an
        apputils.sensitivity.Evaluation (which reuses the activations of the layers before the pruned one).
        """
        from apputils.reports import write_reports
        from apputils.sensitivity import Evaluation

        def split(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
            return batch["blur"], batch["sharp"]

        def metrics(output: torch.Tensor, sharp: torch.Tensor) -> dict[str, float]:
            out, sharp = output.float().cpu(), sharp.float().cpu()
            pairs = [(rgb8(o), rgb8(s)) for o, s in zip(out, sharp, strict=True)]
            return {"psnr": float(np.mean([psnr(o, s) for o, s in pairs])),
                    "ssim": float(np.mean([ssim(o, s) for o, s in pairs])),
                    "loss": float(((out.clamp(0, 1) - sharp) ** 2).mean())}

        out = self.out_dir / "reports"
        out.mkdir(parents=True, exist_ok=True)
        schedule = (self.checkpoint or {}).get("schedule") or {}
        return write_reports(model, Evaluation(self.testing_loader, metrics, split), dummy_input(self.device, 64),
                             out, sense_type=self.opt.sense_type, quantize_flag=bool(schedule.get("quantizers")))
