"""``render()``: the one entry point to every backend."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .backends import default_registry
from .cameras import Camera, StereoRig, stack_cameras
from .splats import Splats
from .types import RENDER_MODES, RenderMode, RenderOptions, RenderOutput


def render(
    splats: Splats,
    cameras: Camera | StereoRig | Sequence[Camera],
    backend: str = "auto",
    sh_degree: int | None = None,
    background: Tensor | Sequence[float] | None = None,
    render_mode: RenderMode = "rgb",
    timing: bool = False,
) -> RenderOutput:
    """Render a scene from one or more cameras.

    Args:
        splats: the scene (N Gaussians); its device decides where rendering happens.
        cameras: a :class:`Camera`, a :class:`StereoRig` (left, right) or a sequence of C cameras of one size.
        backend: ``"auto"`` (``native`` on CUDA when built, else ``torch``), ``"torch"``, ``"native"``, ``"gsplat"``.
        sh_degree: SH degree to evaluate (0..scene degree); the scene's when None.
        background: RGB ``[3]`` or per camera ``[C, 3]``; black when None.
        render_mode: ``"rgb"``, ``"depth"``, ``"rgb+depth"`` or ``"alpha"``.
        timing: record per-stage times in ``stats.times``.

    Returns:
        :class:`RenderOutput` with image ``[C, H, W, 3]``, alpha ``[C, H, W, 1]``, depth ``[C, H, W, 1]``.
    """
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode: expected one of {', '.join(RENDER_MODES)}, got {render_mode!r}")
    if sh_degree is not None and not 0 <= sh_degree <= splats.sh_degree:
        raise ValueError(f"sh_degree: expected 0..{splats.sh_degree} (the scene's degree), got {sh_degree}")
    cams = stack_cameras(cameras, splats.device, splats.dtype)
    bg = _background(background, len(cams), splats.device, splats.dtype)
    chosen = default_registry().resolve(backend, splats.device)
    options = RenderOptions(sh_degree=sh_degree, background=bg, render_mode=render_mode, timing=timing)
    return chosen.render(splats, cams, options, bg)


def _background(background: Tensor | Sequence[float] | None, num_cameras: int, device: torch.device,
                dtype: torch.dtype) -> Tensor:
    """Background as ``[C, 3]``."""
    if background is None:
        return torch.zeros(num_cameras, 3, device=device, dtype=dtype)
    bg = torch.as_tensor(background, device=device, dtype=dtype)
    if bg.shape == (3,):
        return bg.expand(num_cameras, 3)
    if bg.shape == (num_cameras, 3):
        return bg
    raise ValueError(f"background: expected shape [3] or [{num_cameras}, 3], got {list(bg.shape)}")
