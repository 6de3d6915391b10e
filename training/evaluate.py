"""Evaluation on held-out images: PSNR, SSIM, LPIPS (when available) and comparison PNGs."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from data.dataset import Frame, SceneDataset
from renderer import Splats, render

from .atomic import atomic_path
from .losses import psnr, ssim

_log = logging.getLogger("training")


@dataclass(frozen=True)
class EvalResult:
    """Mean metrics over the evaluated frames.

    Attributes:
        step: training step.
        split: ``"test"`` (held-out) or ``"train"`` (when there are no held-out frames).
        frames: number of frames evaluated.
        psnr, ssim: means over the frames.
        lpips: mean LPIPS (AlexNet) or None when the ``lpips`` package or its weights are unavailable.
        images: comparison PNGs written (ground truth | render).
    """

    step: int
    split: str
    frames: int
    psnr: float
    ssim: float
    lpips: float | None
    images: tuple[str, ...] = ()


class LpipsMetric:
    """LPIPS (AlexNet) from the ``lpips`` package, loaded on first use; None when unavailable."""

    def __init__(self) -> None:
        self._net = None
        self._failed = False

    def __call__(self, a: Tensor, b: Tensor) -> float | None:
        """LPIPS of ``a`` against ``b`` ``[H, W, 3]`` in [0, 1]."""
        net = self._load(a.device)
        if net is None:
            return None
        with torch.no_grad():
            x, y = (t.permute(2, 0, 1)[None] * 2 - 1 for t in (a, b))
            return float(net(x, y).item())

    def _load(self, device: torch.device):
        if self._net is None and not self._failed:
            try:
                import lpips

                self._net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
            except Exception as e:  # noqa: BLE001 - a missing package or missing weights both mean "no LPIPS"
                _log.info("LPIPS unavailable (%s); reporting null", e)
                self._failed = True
        return self._net


def save_comparison(path: Path, target: Tensor, rendered: Tensor) -> None:
    """Write ``target | rendered`` (``[H, W, 3]`` each) side by side as a PNG, atomically."""
    both = torch.cat([target, rendered], dim=1).clamp(0, 1)
    pixels = (both.detach().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def evaluate(splats: Splats, dataset: SceneDataset, step: int, backend: str, background: Tensor, out_dir: Path,
             save_images: int = 4, max_frames: int = 0, lpips_metric: LpipsMetric | None = None,
             targets: Callable[[Frame], Tensor] | None = None) -> EvalResult:
    """Render the held-out frames (the training frames when there are none) and average the metrics.

    ``targets``: the ground-truth image of a frame on the scene's device (``dataset.image`` moved there if None).
    """
    split, frames = ("test", dataset.test) if dataset.test else ("train", dataset.train)
    frames = frames[:max_frames] if max_frames > 0 else frames
    psnrs, ssims, lpipss, images = [], [], [], []
    with torch.no_grad():
        for i, frame in enumerate(frames):
            target = targets(frame) if targets is not None else dataset.image(frame).to(splats.device)
            rendered = _render_frame(splats, frame, backend, background)
            psnrs.append(psnr(rendered, target))
            ssims.append(float(ssim(rendered, target)))
            lpipss.append(lpips_metric(rendered, target) if lpips_metric is not None else None)
            if i < save_images:
                path = out_dir / f"step_{step:06d}" / f"{Path(frame.name).stem}.png"
                save_comparison(path, target, rendered)
                images.append(str(path))
    lp = None if any(v is None for v in lpipss) or not lpipss else float(np.mean(lpipss))
    return EvalResult(step, split, len(frames), float(np.mean(psnrs)), float(np.mean(ssims)), lp, tuple(images))


def _render_frame(splats: Splats, frame: Frame, backend: str, background: Tensor) -> Tensor:
    out = render(splats, frame.camera, backend=backend, background=background)
    assert out.image is not None
    return out.image[0].clamp(0, 1)
