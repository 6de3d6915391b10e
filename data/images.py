"""Image files for datasets: header-only size reads, decoding to float RGB (alpha composited), resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .dataset import DatasetError


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, reading only its header."""
    if not path.is_file():
        raise DatasetError(path, "image file missing")
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(path, f"cannot read image: {e}") from None


def read_image_rgb(path: Path, background: tuple[float, float, float]) -> Tensor:
    """Decode ``path`` to float32 RGB in [0, 1] ``[H, W, 3]``; alpha is composited onto ``background``."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            pixels = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DatasetError(path, "image file missing") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(path, f"cannot read image: {e}") from None
    image = torch.from_numpy(pixels)
    if has_alpha:
        alpha = image[..., 3:]
        image = image[..., :3] * alpha + torch.tensor(background, dtype=torch.float32) * (1.0 - alpha)
    return image.contiguous()


def resize_image(image: Tensor, width: int, height: int, path: Path | None = None) -> Tensor:
    """Resize ``image`` ``[H, W, C]`` to ``[height, width, C]`` (antialiased bilinear; unchanged if it fits)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if abs(w / h - width / height) > 0.02 * width / height:
        raise DatasetError(path or Path("?"),
                           f"image is {w}x{h}, which does not scale to the camera's {width}x{height}")
    x = image.permute(2, 0, 1)[None]
    out = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0.0, 1.0).contiguous()
