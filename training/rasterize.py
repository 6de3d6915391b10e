"""One differentiable render per training step, and the ``info`` the densification strategies read.

- ``torch`` / ``native`` (and ``auto``): the backend's three stages called directly (preprocess -> sort -> blend),
  skipping ``render()``'s statistics, which cost a host synchronisation per call; ``info`` comes from
  ``Projected`` (dense ``[C, N]`` layout).
- ``gsplat`` / ``gsplat-packed``: ``gsplat.rasterization`` with the arguments of the ``gsplat`` backend adapter
  (classic 3DGS, 0.3 low-pass, no radius clip, tile 16), whose ``meta`` is exactly what gsplat's strategies expect
  (also in the packed layout, and ``absgrad``).

Cameras are stacked on the training device once per frame and kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from renderer import Camera, Splats
from renderer.backends import StagedBackend, default_registry
from renderer.cameras import CameraBatch, stack_cameras
from renderer.types import LOWPASS_2D, TILE_SIZE, RenderOptions

from .strategy import strategy_info

GSPLAT_BACKENDS = ("gsplat", "gsplat-unpacked", "gsplat-packed")


class Rasterizer:
    """Renders training images with ``backend`` on ``device`` (the backend is resolved, and built, at once)."""

    def __init__(self, backend: str, device: torch.device, absgrad: bool = False) -> None:
        self.device = device
        self.absgrad = absgrad
        self.name = backend
        self.packed = backend == "gsplat-packed"
        self._cams: dict[int, tuple[Camera, CameraBatch]] = {}
        if backend in GSPLAT_BACKENDS:
            self._backend = default_registry().resolve(backend, device)  # checks CUDA and the gsplat package
            import gsplat

            self._gsplat = gsplat.rasterization
        else:
            backend_obj = default_registry().resolve(backend, device)
            if not isinstance(backend_obj, StagedBackend):
                raise ValueError(f"backend: {backend!r} cannot train (no differentiable stages)")
            self._backend = backend_obj
            self.name = backend_obj.name
        if absgrad and self.name not in GSPLAT_BACKENDS:
            raise ValueError("strategy.absgrad: needs the gsplat backend (absgrad of means2d); use absgrad=False")

    def cameras(self, camera: Camera) -> CameraBatch:
        """``camera`` stacked on the device, once per camera object (the cache holds the camera, so its id is not
        reused while cached)."""
        entry = self._cams.get(id(camera))
        if entry is None or entry[0] is not camera:
            entry = self._cams[id(camera)] = (camera, stack_cameras(camera, self.device))
        return entry[1]

    def __call__(self, splats: Splats, camera: Camera, sh_degree: int, background: Tensor) -> tuple[Tensor,
                                                                                                     dict[str, Any]]:
        """Image ``[H, W, 3]`` of ``splats`` seen by ``camera`` and the strategy's ``info``.

        ``background``: ``[1, 3]`` on the device.
        """
        cams = self.cameras(camera)
        if self.name in GSPLAT_BACKENDS:
            return self._gsplat_render(splats, cams, sh_degree, background)
        backend = self._backend
        projected = backend.preprocess(splats, cams, sh_degree, True)
        bins = backend.sort(projected, cams)
        options = RenderOptions(sh_degree=sh_degree, background=background)
        image, _, _ = backend.blend(projected, bins, cams, options, background)
        assert image is not None
        return image[0], strategy_info(projected, cams.width, cams.height)

    def _gsplat_render(self, splats: Splats, cams: CameraBatch, sh_degree: int,
                       background: Tensor) -> tuple[Tensor, dict[str, Any]]:
        colors, alphas, meta = self._gsplat(
            means=splats.means, quats=splats.quats, scales=splats.scales(), opacities=splats.opacities(),
            colors=splats.sh, viewmats=cams.viewmats, Ks=cams.Ks, width=cams.width, height=cams.height,
            near_plane=cams.near, far_plane=cams.far, radius_clip=0.0, eps2d=LOWPASS_2D, sh_degree=sh_degree,
            packed=self.packed, tile_size=TILE_SIZE, backgrounds=None if self.packed else background,
            render_mode="RGB", rasterize_mode="classic", absgrad=self.absgrad)
        image = colors[0]
        if self.packed:  # gsplat 1.5.3's packed path rejects per-camera backgrounds: composite here
            image = image + (1.0 - alphas[0]) * background[0]
        return image, meta
