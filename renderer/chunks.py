"""A spatial index of chunks with bounding spheres, so that culling costs per chunk rather than per Gaussian.

Gaussians are ordered along a Morton (Z-order) curve of their means and cut into chunks of ``chunk_size``; each
chunk keeps a bounding sphere that contains the alpha >= 1/255 ellipsoid of every member (mean plus
``sqrt(2 ln(255 o))`` standard deviations along the largest axis). A chunk whose sphere lies outside a frustum
cannot put a single pixel into it, so dropping it changes no image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .splats import Splats
from .types import ALPHA_MIN


@dataclass(frozen=True)
class ChunkIndex:
    """Chunks of a scene.

    Attributes:
        order: Gaussian indices in chunk order ``[N]`` (int64); chunk ``i`` holds ``order[starts[i]:starts[i+1]]``.
        starts: chunk boundaries ``[M + 1]`` (int64).
        centers: bounding-sphere centres ``[M, 3]``.
        radii: bounding-sphere radii ``[M]``.
        chunk_of: the chunk of each Gaussian ``[N]`` (int64, scene order).
    """

    order: Tensor  # [N]
    starts: Tensor  # [M + 1]
    centers: Tensor  # [M, 3]
    radii: Tensor  # [M]
    chunk_of: Tensor  # [N]

    @property
    def num_chunks(self) -> int:
        return int(self.centers.shape[0])

    def members(self, chunk_mask: Tensor) -> Tensor:
        """Indices ``[V]`` of the Gaussians in the chunks selected by ``chunk_mask`` ``[M]`` (bool)."""
        chunk_ids = torch.nonzero(chunk_mask, as_tuple=True)[0]
        if chunk_ids.numel() == 0:
            return self.order[:0]
        lo, hi = self.starts[chunk_ids], self.starts[chunk_ids + 1]
        counts = hi - lo
        first = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts)
        return self.order[first + torch.arange(int(counts.sum()), device=self.order.device)]

    def members_ascending(self, chunk_mask: Tensor) -> Tensor:
        """:meth:`members` in ascending index order ``[V]`` (int64), in one pass over the scene (no sort)."""
        return torch.nonzero(chunk_mask[self.chunk_of], as_tuple=True)[0]


def _morton_codes(points: Tensor, bits: int = 10) -> Tensor:
    """30-bit Morton codes ``[N]`` of points ``[N, 3]``, quantised on cubic cells (the same size on every axis,
    so that chunks of flat or elongated scenes stay compact)."""
    lo, hi = points.min(0).values, points.max(0).values
    size = (hi - lo).max().clamp_min(1e-12)
    q = ((points - lo) / size * (2**bits - 1)).long().clamp(0, 2**bits - 1)
    code = torch.zeros(points.shape[0], dtype=torch.int64, device=points.device)
    for bit in range(bits):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
    return code


def opacity_aware_reach(splats: Splats) -> Tensor:
    """World distance ``[N]`` beyond which a Gaussian's alpha is under 1/255 in every direction."""
    opacities = splats.opacities().detach()
    k = torch.sqrt((2 * torch.log(opacities.clamp_min(1e-30) / ALPHA_MIN)).clamp_min(0))
    return k * splats.log_scales.detach().max(dim=1).values.exp()


@torch.no_grad()
def build_chunk_index(splats: Splats, chunk_size: int = 4096) -> ChunkIndex:
    """Partition ``splats`` into Morton-ordered chunks of ``chunk_size`` Gaussians with bounding spheres."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
    n, device = len(splats), splats.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return ChunkIndex(empty, torch.zeros(1, dtype=torch.int64, device=device),
                          splats.means.new_zeros((0, 3)), splats.means.new_zeros(0), empty)
    means = splats.means.detach()
    order = torch.argsort(_morton_codes(means))
    m = math.ceil(n / chunk_size)
    starts = torch.clamp(torch.arange(m + 1, device=device) * chunk_size, max=n)
    chunk_of = torch.arange(n, device=device) // chunk_size  # chunk of each position in `order`
    sorted_means = means[order]
    reach = opacity_aware_reach(splats)[order]
    lo = torch.full((m, 3), float("inf"), device=device, dtype=means.dtype)
    hi = torch.full((m, 3), float("-inf"), device=device, dtype=means.dtype)
    lo = lo.scatter_reduce(0, chunk_of[:, None].expand(-1, 3), sorted_means, "amin")
    hi = hi.scatter_reduce(0, chunk_of[:, None].expand(-1, 3), sorted_means, "amax")
    centers = (lo + hi) / 2
    dist = (sorted_means - centers[chunk_of]).norm(dim=1) + reach
    radii = torch.zeros(m, device=device, dtype=means.dtype).scatter_reduce(0, chunk_of, dist, "amax")
    chunk_of_gaussian = torch.empty_like(chunk_of).scatter_(0, order, chunk_of)
    return ChunkIndex(order, starts, centers, radii, chunk_of_gaussian)


@dataclass(frozen=True)
class GuardFrustum:
    """A pyramid from ``world_to_camera``'s centre, wider than the view by ``angle`` on every side and grown by
    ``margin`` (world units) in every direction, so that it contains every view whose camera moved less than
    ``margin`` and turned less than ``angle`` from it.

    Attributes:
        world_to_camera: pose of the pyramid's apex ``[4, 4]`` (OpenCV axes).
        tan_left, tan_right, tan_up, tan_down: half-extents of the view as tangents (positive).
        angle: extra half-angle in radians on every side.
        margin: translation allowance in world units.
    """

    world_to_camera: Tensor
    tan_left: float
    tan_right: float
    tan_up: float
    tan_down: float
    angle: float
    margin: float

    @torch.no_grad()
    def sphere_mask(self, centers: Tensor, radii: Tensor) -> Tensor:
        """Boolean ``[M]``: spheres (``centers [M, 3]``, ``radii [M]``) that may reach inside the guard."""
        w2c = self.world_to_camera.to(centers)
        p = centers @ w2c[:3, :3].T + w2c[:3, 3]
        r = radii + self.margin
        keep = p[:, 2] > -r  # not entirely behind the apex
        for tan_half, axis, sign in ((self.tan_right, 0, 1.0), (self.tan_left, 0, -1.0),
                                     (self.tan_down, 1, 1.0), (self.tan_up, 1, -1.0)):
            half = math.atan(tan_half) + self.angle
            if half >= math.pi / 2 - 1e-6:
                continue  # the widened side is a half-space or more: no culling on this side
            # Outward plane normal for the side at angle `half` from the axis: (cos, -sin) in (lateral, z).
            dist = sign * p[:, axis] * math.cos(half) - p[:, 2] * math.sin(half)
            keep &= dist < r
        return keep
