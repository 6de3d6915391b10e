"""Image losses and metrics: L1, SSIM with a Gaussian window, PSNR."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 2D Gaussian window ``[size, size]``."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype)


def ssim(a: Tensor, b: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of images ``a``, ``b`` ``[..., H, W, C]`` in [0, 1] (Gaussian window, zero padding, as 3DGS).

    Returns a scalar tensor (differentiable).
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim: images must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    h, w, c = a.shape[-3:]
    x = a.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    y = b.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    win = gaussian_window(window_size, sigma, a.dtype).to(a.device).expand(c, 1, window_size, window_size)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, win, padding=window_size // 2, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).mean()


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of ``a`` against ``b`` (values in [0, 1], clamped); inf for identical images."""
    mse = F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).item()
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


class LossTerms(NamedTuple):
    """The training loss and its parts (scalar tensors)."""

    total: Tensor
    l1: Tensor
    ssim: Tensor


def photometric_loss(render: Tensor, target: Tensor, ssim_lambda: float) -> LossTerms:
    """``(1 - lambda) * L1 + lambda * (1 - SSIM)`` of ``render`` against ``target`` ``[..., H, W, 3]``."""
    l1 = (render - target).abs().mean()
    s = ssim(render, target)
    return LossTerms((1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - s), l1, s)
