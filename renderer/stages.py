"""Data passed between the three render stages (preprocess -> sort -> blend).

The frame cache calls the stages one by one and reuses their results across eyes and frames, so these are
plain tensors with documented shapes, shared by every backend that exposes stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Projected:
    """Per-camera 2D footprints of all N Gaussians (dense: culled ones have ``radii == 0``).

    Attributes:
        means2d: projected centres in pixels ``[C, N, 2]``.
        conics: inverse 2D covariance (a, b, c) of ``[[a, b], [b, c]]`` ``[C, N, 3]``.
        depths: camera-space z ``[C, N]``.
        opacities: activated opacities ``[C, N]``.
        colors: RGB from SH, view-dependent ``[C, N, 3]`` (None when colour was not asked for).
        radii: opacity-aware half extent in pixels along x and y ``[C, N, 2]`` (int32; 0 = culled).
        order_keys: what the sort stage orders each tile by, when not the depths ``[C, N]`` (float, >= 0).
        presorted: the Gaussians are already in front-to-back order (index order): the sort stage only groups them
            by tile, keeping that order, and does no depth sort. The frame cache keeps its visible set in the
            centre eye's depth order and reuses it for both eyes and across frames.
    """

    means2d: Tensor  # [C, N, 2]
    conics: Tensor  # [C, N, 3]
    depths: Tensor  # [C, N]
    opacities: Tensor  # [C, N]
    colors: Tensor | None  # [C, N, 3]
    radii: Tensor  # [C, N, 2]
    order_keys: Tensor | None = None  # [C, N]
    presorted: bool = False

    @property
    def visible(self) -> Tensor:
        """Boolean ``[C, N]``: the Gaussians that survived culling."""
        return (self.radii > 0).all(dim=-1)


@dataclass(frozen=True)
class TileBins:
    """(tile, Gaussian) pairs sorted by camera, tile and depth.

    Attributes:
        gaussian_ids: index into N of each pair ``[P]`` (int64).
        tile_offsets: start of each (camera, tile) range in ``gaussian_ids`` ``[C * tiles_y * tiles_x + 1]``.
        tile_size, tiles_x, tiles_y: the tile grid.
    """

    gaussian_ids: Tensor  # [P]
    tile_offsets: Tensor  # [C * TY * TX + 1]
    tile_size: int
    tiles_x: int
    tiles_y: int

    @property
    def num_pairs(self) -> int:
        return int(self.gaussian_ids.shape[0])
