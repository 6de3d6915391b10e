"""Chunked scenes with levels of detail: octree partitioning, moment-matched merging, and the per-chunk layout.

Built once, offline (``gscache convert --chunks``), read at run time by :mod:`renderer.streaming`.

Partitioning (:func:`partition_octree`): the means are quantised on a cube around the scene (21 bits per axis) and
sorted along their Morton (Z-order) curve, so that every octree cell is a contiguous range of the sorted order. A
cell with more than ``chunk_size`` Gaussians is split into its eight children, and consecutive children are packed
back together while their total stays within ``chunk_size``; a cell at the deepest level that is still too full
(coincident points) is cut in runs of ``chunk_size``. The result is deterministic (stable sort, ties by index) and
covers every Gaussian exactly once.

Levels of detail (:func:`merge_groups`, :func:`build_chunked_scene`): level ``l`` of a chunk merges runs of
``factor ** l`` consecutive Gaussians of its Morton order (nearby in space) into one Gaussian by moment matching.
Each Gaussian counts with the weight ``w = opacity * sqrt(det Sigma) = opacity * sx * sy * sz``, its mass up to the
constant ``(2 pi)^(3/2)`` (the integral of ``opacity * exp(-x^T Sigma^-1 x / 2)``). The merged Gaussian keeps

- the mass: ``W = sum w_i``, opacity ``o = W / sqrt(det Sigma)`` (clamped to ``OPACITY_MAX``: mass is kept
  exactly wherever that bound does not bite);
- the mean: ``mu = sum w_i mu_i / W``;
- the covariance: ``Sigma = sum w_i (Sigma_i + (mu_i - mu)(mu_i - mu)^T) / W`` (the second moment about ``mu``),
  turned back into a rotation (quaternion) and log-scales by an eigendecomposition;
- the colour: every SH coefficient is the ``w``-weighted mean (so the DC colour is the mass-weighted mean colour).

Levels are always merged from level 0, so level ``l``'s moments are exactly those of the originals it stands for.
Each level records a geometric error (world units): the RMS, over the level's merged Gaussians, of the RMS distance
of each one's members from its mean (an RMS rather than a maximum, which the rare jumps of the Morton curve would
decide); the streaming renderer projects it to pixels to choose a level.

Layout of one (chunk, level) entry (:func:`pack_splats` / :func:`unpack_splats`): one flat float32 array holding
the column blocks ``means [n, 3]``, ``quats [n, 4]``, ``log_scales [n, 3]``, ``opacity_logits [n]``,
``sh [n, K, 3]`` one after the other, ``n * (11 + 3 K)`` floats, so that a chunk is one slice of a memory map, one
host-to-device copy, and its columns are views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .chunks import opacity_aware_reach
from .splats import Splats

MORTON_BITS = 21  # per axis: 63-bit codes in an int64
OPACITY_MAX = 0.999  # merged opacities are clamped to this (alpha is clamped to 0.99 when blending anyway)
_MERGE_BATCH = 1 << 22  # Gaussians per batch when building levels (bounds temporary memory)


# ----- layout --------------------------------------------------------------------------------------------------
def floats_per_gaussian(sh_coeffs: int) -> int:
    """float32 values per Gaussian in a packed entry: 3 + 4 + 3 + 1 + 3 K."""
    return 11 + 3 * sh_coeffs


def pack_splats(splats: Splats) -> Tensor:
    """The column blocks of ``splats`` one after the other as one flat float32 tensor ``[n * (11 + 3 K)]``."""
    cols = (splats.means, splats.quats, splats.log_scales, splats.opacity_logits, splats.sh)
    return torch.cat([c.detach().to(torch.float32).reshape(-1) for c in cols])


def unpack_splats(flat: Tensor, count: int, sh_coeffs: int) -> Splats:
    """Views of a packed entry ``flat [count * (11 + 3 K)]`` as :class:`Splats` (no copy)."""
    expected = count * floats_per_gaussian(sh_coeffs)
    if flat.ndim != 1 or flat.numel() != expected:
        raise ValueError(f"flat: expected shape [{expected}] for {count} Gaussians with K={sh_coeffs}, "
                         f"got {list(flat.shape)}")
    sizes = (3 * count, 4 * count, 3 * count, count, 3 * sh_coeffs * count)
    means, quats, log_scales, opacity, sh = torch.split(flat, sizes)
    return Splats(means.view(count, 3), quats.view(count, 4), log_scales.view(count, 3), opacity,
                  sh.view(count, sh_coeffs, 3))


# ----- partitioning --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    """Spatial chunks of a scene.

    Attributes:
        order: Gaussian indices in chunk order ``[N]`` (int64); chunk ``i`` is ``order[starts[i]:starts[i + 1]]``.
        starts: chunk boundaries ``[M + 1]`` (int64).
    """

    order: Tensor  # [N]
    starts: Tensor  # [M + 1]

    @property
    def num_chunks(self) -> int:
        return int(self.starts.numel()) - 1

    def counts(self) -> Tensor:
        """Gaussians per chunk ``[M]``."""
        return self.starts[1:] - self.starts[:-1]


def _spread_bits(v: Tensor) -> Tensor:
    """Insert two zero bits between each of the low 21 bits of ``v`` (int64)."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    return (v | (v << 2)) & 0x1249249249249249


def morton_codes(points: Tensor) -> Tensor:
    """63-bit Morton codes ``[N]`` (int64) of ``points [N, 3]`` on the cube around them (same cell size on every
    axis)."""
    p = points.detach().to(torch.float64)
    lo = p.min(0).values
    size = float((p.max(0).values - lo).max())
    top = 2**MORTON_BITS - 1
    q = ((p - lo) / max(size, 1e-30) * top).floor().long().clamp(0, top)
    return _spread_bits(q[:, 0]) | (_spread_bits(q[:, 1]) << 1) | (_spread_bits(q[:, 2]) << 2)


@torch.no_grad()
def partition_octree(means: Tensor, chunk_size: int) -> Partition:
    """Octree chunks of at most ``chunk_size`` Gaussians (see the module docstring); deterministic.

    Args:
        means: positions ``[N, 3]``.
        chunk_size: the most Gaussians in one chunk (>= 1).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
    n = int(means.shape[0])
    if n == 0:
        return Partition(torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    codes = morton_codes(means.cpu())
    order = torch.argsort(codes, stable=True)
    codes = codes[order].contiguous()
    bounds = [0]
    stack = [(0, n, MORTON_BITS)]  # (start, end, levels left below this cell), depth-first in Morton order
    while stack:
        start, end, left = stack.pop()
        if end - start <= chunk_size:
            bounds.append(end)
            continue
        if left == 0:  # coincident points: cut in runs
            bounds.extend(range(start + chunk_size, end, chunk_size))
            bounds.append(end)
            continue
        shift = 3 * (left - 1)
        prefix = (int(codes[start]) >> (shift + 3)) << (shift + 3)
        edges = torch.tensor([prefix + (k << shift) for k in range(1, 8)], dtype=torch.int64)
        cuts = [start, *torch.searchsorted(codes[start:end], edges).add(start).tolist(), end]
        groups = _pack_children(cuts, chunk_size)
        for lo, hi in reversed(groups):
            stack.append((lo, hi, left - 1 if _single_child(cuts, lo, hi) else left))
    starts = torch.tensor(bounds, dtype=torch.int64)
    return Partition(order, starts)


def _pack_children(cuts: list[int], chunk_size: int) -> list[tuple[int, int]]:
    """Consecutive non-empty child ranges of a cell, packed together while their total stays <= ``chunk_size``."""
    groups: list[tuple[int, int]] = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if hi == lo:
            continue
        if groups and hi - groups[-1][0] <= chunk_size:
            groups[-1] = (groups[-1][0], hi)
        else:
            groups.append((lo, hi))
    return groups


def _single_child(cuts: list[int], lo: int, hi: int) -> bool:
    """Whether ``[lo, hi)`` is exactly one child cell (so that the next split goes one level deeper)."""
    return any(a == lo and b == hi for a, b in zip(cuts[:-1], cuts[1:]))


# ----- moment-matched merging ----------------------------------------------------------------------------------
def gaussian_weights(splats: Splats) -> Tensor:
    """Merge weights ``[N]``: ``opacity * sqrt(det Sigma) = opacity * sx * sy * sz`` (float64), the mass of each
    Gaussian up to ``(2 pi)^(3/2)``."""
    return torch.sigmoid(splats.opacity_logits.double()) * torch.exp(splats.log_scales.double().sum(dim=1))


@torch.no_grad()
def merge_groups(splats: Splats, group: Tensor, num_groups: int) -> tuple[Splats, Tensor]:
    """Merge the Gaussians of each group into one by moment matching (see the module docstring).

    Args:
        splats: N Gaussians.
        group: the group of each Gaussian ``[N]`` (int64 in ``[0, num_groups)``; every group non-empty).
        num_groups: G.

    Returns:
        ``(merged, spread)``: G merged Gaussians (float32, group order) and the RMS distance of each group's members
        from its merged mean ``[G]`` (float64, world units).
    """
    if group.shape != (len(splats),):
        raise ValueError(f"group: expected shape [{len(splats)}], got {list(group.shape)}")
    w = gaussian_weights(splats)  # [N]
    total = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, w)  # [G]
    wn = w / total[group]  # normalised weights
    mu_i = splats.means.double()
    mu = torch.zeros(num_groups, 3, dtype=torch.float64).index_add_(0, group, wn[:, None] * mu_i)
    d = mu_i - mu[group]
    second = splats.covariances().double() + d[:, :, None] * d[:, None, :]
    cov = torch.zeros(num_groups, 3, 3, dtype=torch.float64).index_add_(0, group, wn[:, None, None] * second)
    spread = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, wn * d.square().sum(1)).sqrt()
    sh = torch.zeros(num_groups, *splats.sh.shape[1:], dtype=torch.float64)
    sh.index_add_(0, group, wn[:, None, None] * splats.sh.double())
    quats, log_scales = covariance_to_quat_scale(cov)
    opacity = (total / torch.exp(log_scales.sum(1))).clamp(1e-12, OPACITY_MAX)
    logits = torch.log(opacity) - torch.log1p(-opacity)
    fields = (mu, quats, log_scales, logits, sh)
    return Splats(*(t.to(torch.float32).contiguous() for t in fields)), spread


def covariance_to_quat_scale(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Unit quaternions w, x, y, z ``[G, 4]`` and log-scales ``[G, 3]`` with ``R diag(s^2) R^T = cov [G, 3, 3]``.

    Eigenvalues are floored at ``1e-24`` of the largest (a flat merged Gaussian stays flat, not degenerate).
    """
    values, vectors = torch.linalg.eigh(cov.double())
    values = torch.maximum(values, values[:, -1:].clamp_min(1e-300) * 1e-24)
    flip = torch.linalg.det(vectors) < 0  # make R a rotation (det +1)
    vectors[flip, :, 0] = -vectors[flip, :, 0]
    return rotmat_to_quat(vectors), 0.5 * torch.log(values)


def rotmat_to_quat(r: Tensor) -> Tensor:
    """Unit quaternions w, x, y, z ``[G, 4]`` of rotation matrices ``[G, 3, 3]`` (Shepperd's method, w >= 0)."""
    m = r.double()
    t = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cands = torch.stack([
        torch.stack([1 + t, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + 2 * m[:, 0, 0] - t, m[:, 0, 1] + m[:, 1, 0],
                     m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 + 2 * m[:, 1, 1] - t,
                     m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                     1 + 2 * m[:, 2, 2] - t], -1),
    ], 1)  # [G, 4 candidates, 4]
    pick = torch.stack([t, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1).argmax(-1)
    q = cands[torch.arange(m.shape[0]), pick]
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
    return torch.nn.functional.normalize(q, dim=-1)


# ----- a chunked scene -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkedScene:
    """A scene cut into chunks, each with ``num_levels`` levels of detail (level 0: the original Gaussians).

    Level ``l``'s Gaussians of every chunk are ``levels[l]``, chunk ``c`` holding rows
    ``level_starts[l][c]:level_starts[l][c + 1]``. Metadata arrays are CPU tensors indexed ``[chunk, level]``.

    Attributes:
        levels: one :class:`Splats` per level (float32 CPU, chunk order).
        level_starts: per level, chunk boundaries ``[M + 1]`` (int64).
        aabb_min, aabb_max: bounds of the means ``[M, L, 3]`` (float32).
        centers, radii: bounding sphere of the alpha >= 1/255 ellipsoids ``[M, L, 3]``, ``[M, L]`` (float32).
        errors: geometric error of the level in world units ``[M, L]`` (float32; 0 at level 0; module docstring).
    """

    levels: tuple[Splats, ...]
    level_starts: tuple[Tensor, ...]
    aabb_min: Tensor  # [M, L, 3]
    aabb_max: Tensor  # [M, L, 3]
    centers: Tensor  # [M, L, 3]
    radii: Tensor  # [M, L]
    errors: Tensor  # [M, L]

    @property
    def num_chunks(self) -> int:
        return int(self.level_starts[0].numel()) - 1

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def sh_coeffs(self) -> int:
        return int(self.levels[0].sh.shape[1])

    @property
    def counts(self) -> Tensor:
        """Gaussians per entry ``[M, L]`` (int64)."""
        return torch.stack([s[1:] - s[:-1] for s in self.level_starts], dim=1)

    def entry_splats(self, chunk: int, level: int = 0) -> Splats:
        s = self.level_starts[level]
        return self.levels[level].subset(slice(int(s[chunk]), int(s[chunk + 1])))

    def read(self, chunk: int, level: int = 0) -> Tensor:
        """The packed entry (``pack_splats``) of ``chunk`` at ``level`` (float32 CPU, a new tensor)."""
        return pack_splats(self.entry_splats(chunk, level))


@torch.no_grad()
def build_chunked_scene(splats: Splats, chunk_size: int = 65536, lod_levels: int = 0,
                        lod_factor: int = 4) -> ChunkedScene:
    """Partition ``splats`` (:func:`partition_octree`) and add ``lod_levels`` coarser levels per chunk, level ``l``
    merging runs of ``lod_factor ** l`` Gaussians."""
    if lod_levels < 0 or lod_factor < 2:
        raise ValueError(f"lod_levels >= 0 and lod_factor >= 2 expected, got {lod_levels} and {lod_factor}")
    splats = splats.detach().to("cpu", torch.float32)
    part = partition_octree(splats.means, chunk_size)
    levels = [splats.subset(part.order)]
    level_starts = [part.starts]
    spreads = [torch.zeros(len(splats), dtype=torch.float64)]
    for level in range(1, lod_levels + 1):
        merged, starts, spread = _merge_level(levels[0], part.starts, lod_factor**level)
        levels.append(merged)
        level_starts.append(starts)
        spreads.append(spread)
    m, nl = part.num_chunks, len(levels)
    meta = [_entry_bounds(lv, st, sp) for lv, st, sp in zip(levels, level_starts, spreads)]
    aabb_min, aabb_max, centers, radii, errors = (torch.stack([mt[k] for mt in meta], dim=1) for k in range(5))
    if aabb_min.shape != (m, nl, 3):
        raise RuntimeError(f"internal: chunk bounds have shape {list(aabb_min.shape)}, expected [{m}, {nl}, 3]")
    return ChunkedScene(tuple(levels), tuple(level_starts), aabb_min, aabb_max, centers, radii, errors)


def _merge_level(base: Splats, starts: Tensor, group_size: int) -> tuple[Splats, Tensor, Tensor]:
    """Merge runs of ``group_size`` Gaussians inside every chunk of ``base`` (chunk boundaries ``starts``)."""
    counts = starts[1:] - starts[:-1]
    groups_per_chunk = (counts + group_size - 1) // group_size
    new_starts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(groups_per_chunk, 0)])
    chunk_of = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    group = new_starts[chunk_of] + (torch.arange(len(base)) - starts[chunk_of]) // group_size
    parts, spreads = [], []
    lo = 0
    while lo < len(base):  # batches that end on a group boundary
        hi = min(lo + _MERGE_BATCH, len(base))
        while hi < len(base) and group[hi] == group[hi - 1]:
            hi += 1
        g = group[lo:hi] - group[lo]
        merged, spread = merge_groups(base.subset(slice(lo, hi)), g, int(g[-1]) + 1)
        parts.append(merged)
        spreads.append(spread)
        lo = hi
    fields = [torch.cat([getattr(p, k) for p in parts]) for k in ("means", "quats", "log_scales", "opacity_logits",
                                                                    "sh")]
    return Splats(*fields), new_starts, torch.cat(spreads)


def _entry_bounds(splats: Splats, starts: Tensor, spread: Tensor) -> tuple[Tensor, ...]:
    """Per chunk: AABB min/max ``[M, 3]``, sphere centre ``[M, 3]`` and radius ``[M]``, error ``[M]``."""
    m = int(starts.numel()) - 1
    counts = starts[1:] - starts[:-1]
    chunk_of = torch.repeat_interleave(torch.arange(m), counts)
    idx3 = chunk_of[:, None].expand(-1, 3)
    means = splats.means.double()
    lo = torch.full((m, 3), math.inf, dtype=torch.float64).scatter_reduce(0, idx3, means, "amin")
    hi = torch.full((m, 3), -math.inf, dtype=torch.float64).scatter_reduce(0, idx3, means, "amax")
    empty = counts == 0
    lo[empty], hi[empty] = 0.0, 0.0
    centers = (lo + hi) / 2
    reach = opacity_aware_reach(splats).double()
    dist = (means - centers[chunk_of]).norm(dim=1) + reach
    radii = torch.zeros(m, dtype=torch.float64).scatter_reduce(0, chunk_of, dist, "amax")
    sq = torch.zeros(m, dtype=torch.float64).index_add_(0, chunk_of, spread.square())
    errors = (sq / counts.clamp_min(1)).sqrt()
    # float32 storage: grow the radius by the rounding of the centre and of itself, so that the stored sphere still
    # contains every member
    slack = 4 * torch.finfo(torch.float32).eps * (centers.abs().max(dim=1).values + radii)
    radii32 = torch.nextafter((radii + slack).float(), torch.tensor(math.inf))
    return lo.float(), hi.float(), centers.float(), radii32, errors.float()
