"""Image losses and metrics: L1, SSIM with a Gaussian window, PSNR."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def gaussian_kernel(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1D Gaussian ``[size]``."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 2D Gaussian window ``[size, size]``."""
    g = gaussian_kernel(size, sigma, torch.float64)
    return torch.outer(g, g).to(dtype)


_KERNELS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _separable_kernels(size: int, sigma: float, channels: int, dtype: torch.dtype,
                       device: torch.device) -> tuple[Tensor, Tensor]:
    """Depthwise row and column kernels ``[channels, 1, 1, size]`` and ``[channels, 1, size, 1]`` (cached)."""
    key = (size, sigma, channels, dtype, device)
    if key not in _KERNELS:
        g = gaussian_kernel(size, sigma, dtype).to(device)
        _KERNELS[key] = (g.view(1, 1, 1, size).expand(channels, 1, 1, size).contiguous(),
                         g.view(1, 1, size, 1).expand(channels, 1, size, 1).contiguous())
    return _KERNELS[key]


def ssim(a: Tensor, b: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of images ``a``, ``b`` ``[..., H, W, C]`` in [0, 1] (Gaussian window, zero padding, as 3DGS).

    The five local moments are blurred together, separably (a row then a column pass of one depthwise
    convolution each): the same values as the 2D window up to rounding. Returns a scalar tensor (differentiable).
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim: images must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    h, w, c = a.shape[-3:]
    x = a.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    y = b.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    r = window_size // 2
    rows, cols = _separable_kernels(window_size, sigma, 5 * c, a.dtype, a.device)
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    blurred = F.conv2d(F.conv2d(moments, rows, padding=(0, r), groups=5 * c), cols, padding=(r, 0), groups=5 * c)
    mu_x, mu_y, xx, yy, xy = blurred.split(c, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    num = (2 * mu_xy + SSIM_C1) * (2 * (xy - mu_xy) + SSIM_C2)
    den = (mu_xx + mu_yy + SSIM_C1) * ((xx - mu_xx) + (yy - mu_yy) + SSIM_C2)
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
