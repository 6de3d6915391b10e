"""The ``torch`` backend: pure PyTorch, differentiable, CPU and CUDA; the reference for every other backend."""

from __future__ import annotations

import torch

from .._torch_impl import _bin_tiles, _blend, _preprocess
from ..cameras import CameraBatch
from ..splats import Splats
from ..stages import Projected, TileBins
from ..types import TILE_SIZE, RenderOptions
from .base import StagedBackend


class TorchBackend(StagedBackend):
    """Reference rasterizer in PyTorch (see :mod:`renderer._torch_impl`)."""

    name = "torch"
    uses_covariances = True

    def __init__(self, tile_size: int = TILE_SIZE, round_size: int = 32) -> None:
        self.tile_size = tile_size
        self.round_size = round_size

    def preprocess(self, splats: Splats, cams: CameraBatch, sh_degree: int, with_colors: bool,
                   covariances: torch.Tensor | None = None, items: torch.Tensor | None = None) -> Projected:
        if items is not None:  # the reference gathers (the native kernel reads in place)
            splats = splats.subset(items.long())
            covariances = None if covariances is None else covariances[items.long()]
        return _preprocess(splats, cams, sh_degree, with_colors, covariances)

    def sort(self, projected: Projected, cams: CameraBatch) -> TileBins:
        return _bin_tiles(projected, cams.width, cams.height, self.tile_size)

    def blend(self, projected: Projected, bins: TileBins, cams: CameraBatch, options: RenderOptions,
              background: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        return _blend(projected, bins, cams.width, cams.height, background, options.wants_color,
                      options.wants_depth, self.round_size)
