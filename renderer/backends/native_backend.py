"""The ``native`` backend: gscache's own CUDA rasterizer (``cuda/csrc``), forward and backward.

It computes the same image as the ``torch`` reference (see :mod:`renderer._torch_impl`) and exposes the same three
stages, so that the frame cache can call them separately. The extension is built or loaded on first use
(:mod:`renderer.native.build`); constructing this backend builds nothing.
"""

from __future__ import annotations

import torch

from ..cameras import CameraBatch
from ..splats import Splats
from ..stages import Projected, TileBins
from ..types import RenderOptions
from .base import BackendUnavailableError, StagedBackend


class NativeBackend(StagedBackend):
    """CUDA rasterizer: float32 scenes on a CUDA device. ``TileBins`` ids/offsets it returns are int32."""

    name = "native"

    def check_available(self, device: torch.device) -> None:
        if torch.device(device).type != "cuda":
            raise BackendUnavailableError(f"native: needs a CUDA device, got {device}")
        from ..native.build import load_native

        load_native(torch.device(device))

    def preprocess(self, splats: Splats, cams: CameraBatch, sh_degree: int, with_colors: bool,
                   covariances: torch.Tensor | None = None, items: torch.Tensor | None = None) -> Projected:
        # The kernel builds each covariance from its quaternion and scales in registers, which reads less
        # memory than loading a precomputed [N, 3, 3]; `covariances` is therefore not needed here.
        from ..native import functional

        return functional.preprocess(splats, cams, sh_degree, with_colors, items)

    def sort(self, projected: Projected, cams: CameraBatch) -> TileBins:
        from ..native import functional

        return functional.sort(projected, cams)

    def blend(self, projected: Projected, bins: TileBins, cams: CameraBatch, options: RenderOptions,
              background: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        from ..native import functional

        return functional.blend(projected, bins, cams.width, cams.height, background, options.wants_color,
                                options.wants_depth)

    def sort_counted(self, projected: Projected, cams: CameraBatch) -> tuple[TileBins, torch.Tensor]:
        # The visible counts come from the sort (counted while it keys the depth order) instead of a reduction
        # over the [C, N, 2] radii: one pass over the items less (StagedBackend.render uses this).
        from ..native import functional

        return functional.sort_with_counts(projected, cams)
