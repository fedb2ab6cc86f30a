"""The SR Tester: rebuilds a (possibly compressed) checkpoint, scores it against bicubic on whole
images, writes the SR images and the table, and optionally the reports."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from apps.common.solver import AppTester, score_table
from apputils.checkpoint import load_checkpoint, rebuild_model
from apputils.execution_env import UserError
from compress.modules import nonzero_parameters

from .evaluation import ImageScore, evaluate, mean_scores
from .metrics import psnr, ssim, to_uint8, ycbcr_to_rgb
from .models import build_model, input_kind
from .solver import APP, arch_input_kind, dummy_input

log = logging.getLogger(__name__)


def format_table(scores: list[ImageScore], scale: int) -> str:
    """A plain-text table: one row per image and the mean, model beside bicubic."""
    m = mean_scores(scores)
    return score_table(f"x{scale} super-resolution, Y channel, {scale}-pixel border cropped", "bicubic", "model",
                       [(s.name, s.bicubic_psnr, s.bicubic_ssim, s.psnr, s.ssim) for s in scores],
                       (m["bicubic_psnr"], m["bicubic_ssim"], m["psnr"], m["ssim"]))


class Tester(AppTester):
    """Tests an SR checkpoint: `Tester(config, testing_loader).run(config)`."""

    APP = APP

    def build_model(self) -> nn.Module:
        """Rebuild the model from the checkpoint (thinning / quantization replayed from its schedule)."""
        ckpt = load_checkpoint(self.opt.model, APP)
        kind = arch_input_kind(ckpt["arch"]["name"])
        scale = int(ckpt["arch"]["kwargs"].get("upscale_factor", self.opt.upscale_factor))
        if scale != self.opt.upscale_factor:
            raise UserError(f"--upscale_factor {self.opt.upscale_factor} differs from the checkpoint's scale "
                            f"{scale} ({self.opt.model}); leave the option out or use a x{self.opt.upscale_factor} model")
        self.model, _, _ = rebuild_model(ckpt, build_model, device=self.device,
                                         dummy_input=dummy_input(scale, kind, self.device))
        self.model.eval()
        self.criterion = nn.MSELoss()
        self.checkpoint = ckpt
        log.info("rebuilt %s x%d from %s (epoch %d, schedule %s): %d non-zero parameters",
                 ckpt["arch"]["name"], scale, self.opt.model, ckpt["epoch"],
                 "yes" if ckpt.get("schedule") else "none", nonzero_parameters(self.model))
        return self.model

    def _write_image(self, sample: dict[str, Any], sr_y: np.ndarray) -> None:
        ycbcr = np.concatenate([sr_y[..., None], sample["cbcr"].numpy().transpose(1, 2, 0)], axis=-1)
        name = sample["name"]
        Image.fromarray(ycbcr_to_rgb(ycbcr)).save(self.out_dir / f"{name}_x{self.opt.upscale_factor}_sr.png")
        bic = np.concatenate([np.rint(sample["bicubic"][0].numpy() * 255)[..., None],
                              sample["cbcr"].numpy().transpose(1, 2, 0)], axis=-1)
        Image.fromarray(ycbcr_to_rgb(bic)).save(self.out_dir / f"{name}_x{self.opt.upscale_factor}_bicubic.png")

    def test(self, model: nn.Module, save_images: bool = False) -> dict[str, float]:
        """Mean PSNR / SSIM / loss of `model` on the test images (also kept per image in self.scores)."""
        self.scores = evaluate(model, self.testing_loader, self.device, self.opt.upscale_factor,
                               on_image=self._write_image if save_images else None)
        return mean_scores(self.scores)

    def write_table(self) -> Path:
        """results/<run>/metrics.csv: one row per image and the mean."""
        path = self.out_dir / "metrics.csv"
        m = mean_scores(self.scores)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "mse"])
            for s in self.scores:
                writer.writerow([s.name, f"{s.psnr:.4f}", f"{s.ssim:.5f}", f"{s.bicubic_psnr:.4f}",
                                 f"{s.bicubic_ssim:.5f}", f"{s.loss:.7f}"])
            writer.writerow(["mean", f"{m['psnr']:.4f}", f"{m['ssim']:.5f}", f"{m['bicubic_psnr']:.4f}",
                             f"{m['bicubic_ssim']:.5f}", f"{m['loss']:.7f}"])
        return path

    def table(self) -> str:
        """The per-image table, model beside bicubic."""
        return format_table(self.scores, self.opt.upscale_factor)

    def reports(self, model: nn.Module) -> dict[str, Any]:
        """Sensitivity / sparsity / MACs / ONNX / drawing reports into results/<run>/reports/.

        The test is handed over as an apputils.sensitivity.Evaluation (same images, same PSNR / SSIM
        as test()), which lets the sensitivity analysis reuse the activations of unchanged layers.
        """
        from apputils.reports import write_reports
        from apputils.sensitivity import Evaluation

        kind = input_kind(model)
        border = self.opt.upscale_factor

        def split(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
            return batch["bicubic" if kind == "bicubic" else "lr"], batch["hr"]

        def metrics(output: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
            out, hr = output.float().cpu(), hr.float().cpu()
            values = [(psnr(to_uint8(o[0]), to_uint8(h[0]), border), ssim(to_uint8(o[0]), to_uint8(h[0]), border))
                      for o, h in zip(out, hr, strict=True)]
            return {"psnr": float(np.mean([v[0] for v in values])), "ssim": float(np.mean([v[1] for v in values])),
                    "loss": float(((out.clamp(0, 1) - hr) ** 2).mean())}

        dummy = dummy_input(border, kind, self.device, side=64)
        out = self.out_dir / "reports"
        out.mkdir(parents=True, exist_ok=True)
        schedule = (self.checkpoint or {}).get("schedule") or {}
        return write_reports(model, Evaluation(self.testing_loader, metrics, split), dummy, out,
                             sense_type=self.opt.sense_type, quantize_flag=bool(schedule.get("quantizers")))
