"""The ``gsplat`` backend: an adapter over ``gsplat.rasterization`` (v1.5.3), the peer gscache is measured against.

gsplat takes the same conventions as our reference (OpenCV world-to-camera ``viewmats``, pinhole ``K`` with a real
principal point, pixel centres at +0.5, SH coefficient-major ``[N, K, 3]`` with ``0.5 + SH`` clamped at 0, the 0.3
low-pass on the 2D covariance), so the adapter only activates the raw parameters and renames the outputs.

Known difference from the ``torch`` reference: gsplat clamps each Gaussian's alpha to 0.999, the reference (and the
original 3DGS) to 0.99. The effect is small: on ``guitar`` and ``playbot`` (orbit, stereo 1032 x 1104, H200) gsplat
against torch gave PSNR 97.0 / 94.0 dB at the worst frame (see ``benchmarks/results/*gsplat-vs-torch*``).

Costs the adapter adds to gsplat's own: the activated scales and opacities (exp, sigmoid; 16 bytes per Gaussian per
frame), one host synchronisation for the stats, and, in packed mode, the background composited in an extra pass.

gsplat is imported on first use only; it compiles its CUDA extension on first call (about a minute).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

from ..cameras import CameraBatch
from ..splats import Splats
from ..types import LOWPASS_2D, TILE_SIZE, RenderMode, RenderOptions, RenderOutput, RenderStats
from .base import Backend, BackendUnavailableError

GSPLAT_VERSION = "1.5.3"
# Our render modes -> gsplat's. "alpha" asks for the cheapest one-channel mode and keeps only the alpha.
_GSPLAT_MODES: dict[RenderMode, str] = {"rgb": "RGB", "rgb+depth": "RGB+ED", "depth": "ED", "alpha": "D"}


class GsplatBackend(Backend):
    """Renders with ``gsplat.rasterization`` (classic 3DGS mode), all C cameras in one batched call.

    Args:
        packed: gsplat's ``packed`` layout (projected Gaussians stored as a flat list of visible (camera, Gaussian)
            pairs instead of dense ``[C, N]`` arrays); the backend is named ``gsplat-packed`` then, else ``gsplat``.
        tile_size: tile side in pixels (16, as in our other backends).
    """

    name = "gsplat"

    def __init__(self, packed: bool = False, tile_size: int = TILE_SIZE) -> None:
        self.packed = packed
        self.tile_size = tile_size
        self.name = "gsplat-packed" if packed else "gsplat"
        self._module: ModuleType | None = None

    def check_available(self, device: torch.device) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise BackendUnavailableError(
                f"{self.name}: gsplat rasterizes on CUDA only, but the scene is on {device}; move it to a CUDA "
                "device or use the 'torch' backend"
            )
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"{self.name}: CUDA is not available in this PyTorch build or machine")
        self._gsplat()

    def _gsplat(self) -> ModuleType:
        """The imported ``gsplat`` package (imported once), or :class:`BackendUnavailableError`."""
        if self._module is None:
            try:
                self._module = importlib.import_module("gsplat")
            except ImportError as err:
                raise BackendUnavailableError(
                    f"{self.name}: the gsplat package is not installed ({err}); install it with "
                    f"`pip install gsplat=={GSPLAT_VERSION}`"
                ) from err
        return self._module

    def render(self, splats: Splats, cams: CameraBatch, options: RenderOptions,
               background: Tensor) -> RenderOutput:
        """Render ``splats`` ([N] Gaussians) for the C cameras of ``cams``; ``background`` is ``[C, 3]``.

        Returns image ``[C, H, W, 3]`` (None in the depth and alpha modes), alpha ``[C, H, W, 1]``, expected depth
        ``[C, H, W, 1]`` (depth modes only; 0 where nothing was hit) and stats (visible Gaussians per camera,
        tile keys). The stats cost one host synchronisation at the end of the call.
        """
        gsplat = self._gsplat()
        sh_degree = splats.sh_degree if options.sh_degree is None else options.sh_degree
        mode = _GSPLAT_MODES[options.render_mode]
        cams = cams.to(splats.device, splats.dtype)
        colors, alphas, meta = gsplat.rasterization(
            means=splats.means,  # [N, 3]
            quats=splats.quats,  # [N, 4], normalised by gsplat
            scales=splats.scales(),  # [N, 3]
            opacities=splats.opacities(),  # [N]
            colors=splats.sh,  # [N, K, 3]
            viewmats=cams.viewmats,  # [C, 4, 4]
            Ks=cams.Ks,  # [C, 3, 3]
            width=cams.width,
            height=cams.height,
            near_plane=cams.near,
            far_plane=cams.far,
            radius_clip=0.0,
            eps2d=LOWPASS_2D,
            sh_degree=sh_degree,
            packed=self.packed,
            tile_size=self.tile_size,
            backgrounds=None if self.packed else background.to(splats.dtype).contiguous(),  # [C, 3]
            render_mode=mode,
            rasterize_mode="classic",
        )
        image, depth = _split_channels(colors, options.render_mode)
        if self.packed and image is not None:
            # gsplat 1.5.3's packed path rejects per-camera backgrounds (its shape check expects [channels] while
            # its kernel reads [C, channels]), so the background is composited here: one extra elementwise pass.
            image = image + (1.0 - alphas) * background.to(image.dtype)[:, None, None, :]
        return RenderOutput(image=image, alpha=alphas, depth=depth, stats=_stats(meta, len(cams), self.packed))


def _split_channels(colors: Tensor, mode: RenderMode) -> tuple[Tensor | None, Tensor | None]:
    """Split gsplat's ``[C, H, W, D]`` output into ``(image [C, H, W, 3] | None, depth [C, H, W, 1] | None)``."""
    if mode == "rgb":
        return colors, None
    if mode == "rgb+depth":
        return colors[..., :3], colors[..., 3:4]
    if mode == "depth":
        return None, colors
    return None, None


def _stats(meta: dict, num_cameras: int, packed: bool) -> RenderStats:
    """Visible Gaussians per camera and the number of (tile, Gaussian) keys from gsplat's ``meta``."""
    radii = meta.get("radii")
    visible: list[int] = []
    if radii is not None:
        if packed:
            camera_ids = meta["camera_ids"]  # [nnz]
            visible = torch.bincount(camera_ids.long(), minlength=num_cameras).tolist()
        else:
            visible = (radii > 0).all(dim=-1).sum(dim=-1).reshape(-1).tolist()  # radii [C, N, 2]
    isect_ids = meta.get("isect_ids")
    tile_keys = int(isect_ids.shape[0]) if isect_ids is not None else 0
    return RenderStats(visible=visible, tile_keys=tile_keys)
