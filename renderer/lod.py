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
  turned back into a rotation (quaternion) and log-scales by an eigendecomposition (:func:`eigh_sym3`, closed
  form, vectorised);
- the colour: every SH coefficient is the ``w``-weighted mean (so the DC colour is the mass-weighted mean colour).

Levels keep the moments of the originals they stand for: :func:`build_chunked_scene` carries each merged Gaussian's
unclamped mass, mean, second moment and spread (float64) and merges level ``l + 1`` from level ``l`` (runs of
``factor`` inside a chunk, nested in the runs of the level below), which by the parallel-axis theorem gives exactly
the moments of merging the ``factor ** (l + 1)`` originals at once (:func:`merge_groups`), for a third of the work.
Each level records a geometric error (world units): the RMS, over the level's merged Gaussians, of the RMS distance
of each one's members from its mean (an RMS rather than a maximum, which the rare jumps of the Morton curve would
decide); the streaming renderer projects it to pixels to choose a level.

The build works in blocks of whole chunks (``block_gaussians``), so that its temporary memory is bounded, with
vectorised torch operations only (no loop over Gaussians); ``device="cuda"`` runs the arithmetic on the GPU (the
result comes back to the CPU).

Layout of one (chunk, level) entry (:func:`pack_splats` / :func:`unpack_splats`): one flat float32 array holding
the column blocks ``means [n, 3]``, ``quats [n, 4]``, ``log_scales [n, 3]``, ``opacity_logits [n]``,
``sh [n, K, 3]`` one after the other, ``n * (11 + 3 K)`` floats, so that a chunk is one slice of a memory map, one
host-to-device copy, and its columns are views.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from .chunks import opacity_aware_reach
from .splats import Splats

MORTON_BITS = 21  # per axis: 63-bit codes in an int64
OPACITY_MAX = 0.999  # merged opacities are clamped to this (alpha is clamped to 0.99 when blending anyway)
BLOCK_GAUSSIANS = 1 << 18  # Gaussians per block when building levels on the CPU (cache-sized temporaries)
_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


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


# Spreading 21 bits with two zero bits between each: (shift, mask) steps, applied as v = (v | v << shift) & mask.
_SPREAD_STEPS = ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F), (4, 0x10C30C30C30C30C3),
                 (2, 0x1249249249249249))


def _morton_block(p: Tensor, lo: Tensor, inv: float, out: Tensor) -> None:
    """Morton codes of the points ``p [n, 3]`` into ``out [n]``, with in-place integer operations (a block small
    enough to stay in the CPU's cache is several times faster than whole-array temporaries)."""
    q = (p.to(torch.float64) - lo).mul_(inv).floor_().clamp_(0, 2**MORTON_BITS - 1).long()  # [n, 3]
    tmp = torch.empty_like(out)
    out.zero_()
    for axis in range(3):
        v = q[:, axis].contiguous()
        v &= 0x1FFFFF
        for shift, mask in _SPREAD_STEPS:
            torch.bitwise_left_shift(v, shift, out=tmp)
            v |= tmp
            v &= mask
        if axis:
            v <<= axis
        out |= v


@torch.no_grad()
def morton_codes(points: Tensor, block: int | None = None) -> Tensor:
    """63-bit Morton codes ``[N]`` (int64) of ``points [N, 3]`` on the cube around them (same cell size on every
    axis), on the points' device; computed ``block`` points at a time (65536 on the CPU, 2^24 on a GPU)."""
    p = points.detach()
    n = int(p.shape[0])
    out = torch.empty(n, dtype=torch.int64, device=p.device)
    if n == 0:
        return out
    block = block or (1 << 16 if p.device.type == "cpu" else 1 << 24)
    lo = p.min(0).values.to(torch.float64)
    size = float((p.max(0).values.to(torch.float64) - lo).max())
    inv = (2**MORTON_BITS - 1) / max(size, 1e-30)
    for a in range(0, n, block):
        _morton_block(p[a:a + block], lo, inv, out[a:a + block])
    return out


@torch.no_grad()
def partition_octree(means: Tensor, chunk_size: int, device: torch.device | str | None = None) -> Partition:
    """Octree chunks of at most ``chunk_size`` Gaussians (see the module docstring); deterministic.

    Args:
        means: positions ``[N, 3]``.
        chunk_size: the most Gaussians in one chunk (>= 1).
        device: where to compute the codes and sort them (the means' device when None); the result is on the CPU.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
    n = int(means.shape[0])
    if n == 0:
        return Partition(torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    codes = morton_codes(means.detach().to(device if device is not None else means.device))
    codes, order = torch.sort(codes, stable=True)
    codes, order = codes.cpu().contiguous(), order.cpu()
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

    The reference for arbitrary groups; :func:`build_chunked_scene` merges runs inside chunks level by level with
    the same moments.

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
    device = splats.device
    w = gaussian_weights(splats)  # [N]
    total = torch.zeros(num_groups, dtype=torch.float64, device=device).index_add_(0, group, w)  # [G]
    wn = w / total[group]  # normalised weights
    mu_i = splats.means.double()
    mu = torch.zeros(num_groups, 3, dtype=torch.float64, device=device).index_add_(0, group, wn[:, None] * mu_i)
    d = mu_i - mu[group]
    second = splats.covariances().double() + d[:, :, None] * d[:, None, :]
    cov = torch.zeros(num_groups, 3, 3, dtype=torch.float64, device=device).index_add_(
        0, group, wn[:, None, None] * second)
    spread = torch.zeros(num_groups, dtype=torch.float64, device=device).index_add_(
        0, group, wn * d.square().sum(1)).sqrt()
    sh = torch.zeros(num_groups, *splats.sh.shape[1:], dtype=torch.float64, device=device)
    sh.index_add_(0, group, wn[:, None, None] * splats.sh.double())
    return _merged_splats(total, mu, _sym6(cov), sh), spread


def covariance_to_quat_scale(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Unit quaternions w, x, y, z ``[G, 4]`` and log-scales ``[G, 3]`` with ``R diag(s^2) R^T = cov [G, 3, 3]``.

    Eigenvalues are floored at ``1e-24`` of the largest (a flat merged Gaussian stays flat, not degenerate).
    """
    return _quat_scale_from_sym6(_sym6(cov.double()))


def _quat_scale_from_sym6(c6: Tensor) -> tuple[Tensor, Tensor]:
    values, vectors = eigh_sym3(c6)
    values = torch.maximum(values, values[:, -1:].clamp_min(1e-300) * 1e-24)
    det = (vectors[:, :, 0] * torch.linalg.cross(vectors[:, :, 1], vectors[:, :, 2])).sum(1)
    flip = det < 0  # make R a rotation (det +1)
    vectors[:, :, 0] = torch.where(flip[:, None], -vectors[:, :, 0], vectors[:, :, 0])
    return rotmat_to_quat(vectors), 0.5 * torch.log(values)


def _sym6(cov: Tensor) -> Tensor:
    """The six distinct entries ``(xx, yy, zz, xy, xz, yz)`` ``[G, 6]`` of symmetric matrices ``[G, 3, 3]``."""
    return torch.stack([cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2], cov[:, 0, 1], cov[:, 0, 2], cov[:, 1, 2]], dim=1)


def eigh_sym3(c6: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) ``[G, 3]`` and unit eigenvectors (columns, orthonormal) ``[G, 3, 3]`` of symmetric
    3x3 matrices given by their entries ``(xx, yy, zz, xy, xz, yz)`` ``[G, 6]`` (float64).

    Closed form, vectorised (no per-matrix solver call), after D. Eberly, "A Robust Eigensolver for 3x3 Symmetric
    Matrices" (2014): the trigonometric formula says which eigenvalue is the best separated, its eigenvector is the
    largest cross product of two rows of ``A - lambda I``, and the other two come from the 2x2 problem in the plane
    orthogonal to it, solved with a Jacobi rotation. Eigenvalues are then Rayleigh quotients and the 2x2 block's,
    which keeps them accurate to about ``1e-16 * |A|`` (like LAPACK), also for flat or needle-like covariances where
    the trigonometric values alone lose half the digits. Repeated eigenvalues give an orthonormal basis of their
    eigenspace.
    """
    c6 = c6.double()
    scale = c6.abs().amax(dim=1).clamp_min(1e-300)  # [G]; scaled to [-1, 1] against overflow
    a00, a11, a22, a01, a02, a12 = (c6 / scale[:, None]).unbind(1)
    q = (a00 + a11 + a22) / 3
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = torch.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + 2 * (a01 * a01 + a02 * a02 + a12 * a12)) / 6)
    ps = torch.where(p > 0, p, torch.ones_like(p))
    c00 = b11 * b22 - a12 * a12
    c01 = a01 * b22 - a12 * a02
    c02 = a01 * a12 - b11 * a02
    half_det = ((b00 * c00 - a01 * c01 + a02 * c02) / (ps * ps * ps) / 2).clamp(-1.0, 1.0)
    angle = torch.acos(half_det) / 3
    # half_det >= 0: the largest eigenvalue is the best separated, else the smallest
    isolated = q + ps * 2 * torch.where(half_det >= 0, torch.cos(angle), torch.cos(angle + 2 * math.pi / 3))
    rows = torch.stack([torch.stack([a00, a01, a02], 1), torch.stack([a01, a11, a12], 1),
                        torch.stack([a02, a12, a22], 1)], 1)  # [G, 3, 3]
    w = _eigenvector_from_rows(rows, isolated)
    u, v = _orthogonal_complement(w)
    au, av, aw = ((rows * x[:, None, :]).sum(-1) for x in (u, v, w))
    cos, sin, lam_u, lam_v = _jacobi_2x2((u * au).sum(1), (u * av).sum(1), (v * av).sum(1))
    e_u = cos[:, None] * u - sin[:, None] * v
    e_v = sin[:, None] * u + cos[:, None] * v
    values = torch.stack([(w * aw).sum(1), lam_u, lam_v], dim=1)  # [G, 3]
    vectors = torch.stack([w, e_u, e_v], dim=2)  # columns
    values, order = torch.sort(values, dim=1)
    vectors = vectors.gather(2, order[:, None, :].expand(-1, 3, -1))
    return values * scale[:, None], vectors


def _eigenvector_from_rows(rows: Tensor, value: Tensor) -> Tensor:
    """A unit vector in the null space of ``A - value I`` (rows ``[G, 3, 3]``) for a simple eigenvalue: the
    largest of the three cross products of its rows (``(1, 0, 0)`` where all vanish: ``A = value I``)."""
    m = rows - value[:, None, None] * torch.eye(3, dtype=rows.dtype, device=rows.device)
    r0, r1, r2 = m.unbind(1)
    crosses = torch.stack([torch.linalg.cross(r0, r1), torch.linalg.cross(r0, r2), torch.linalg.cross(r1, r2)], 1)
    norms = crosses.square().sum(-1)  # [G, 3]
    best = norms.argmax(dim=1)
    pick = crosses[torch.arange(rows.shape[0], device=rows.device), best]
    length = norms.gather(1, best[:, None]).sqrt()
    unit_x = torch.tensor([1.0, 0.0, 0.0], dtype=rows.dtype, device=rows.device).expand_as(pick)
    return torch.where(length > 0, pick / length.clamp_min(1e-300), unit_x)


def _orthogonal_complement(w: Tensor) -> tuple[Tensor, Tensor]:
    """Unit vectors ``u, v`` ``[G, 3]`` with ``(u, v, w)`` orthonormal, for unit ``w [G, 3]``."""
    w0, w1, w2 = w.unbind(1)
    zero = torch.zeros_like(w0)
    use_x = w0.abs() > w1.abs()
    inv_a = torch.rsqrt((w0 * w0 + w2 * w2).clamp_min(1e-300))
    inv_b = torch.rsqrt((w1 * w1 + w2 * w2).clamp_min(1e-300))
    u = torch.where(use_x[:, None], torch.stack([-w2 * inv_a, zero, w0 * inv_a], 1),
                    torch.stack([zero, w2 * inv_b, -w1 * inv_b], 1))
    return u, torch.linalg.cross(w, u)


def _jacobi_2x2(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rotation ``(cos, sin)`` that diagonalises ``[[a, b], [b, c]]`` and its eigenvalues ``(a', c')``: the
    eigenvectors are ``(cos, -sin)`` and ``(sin, cos)`` (Rutishauser's stable formulas)."""
    nonzero = b != 0
    theta = (c - a) / (2 * torch.where(nonzero, b, torch.ones_like(b)))
    t = torch.sign(theta) / (theta.abs() + torch.sqrt(1 + theta * theta))
    t = torch.where(nonzero & torch.isfinite(theta), torch.where(theta == 0, torch.ones_like(t), t),
                    torch.zeros_like(t))
    cos = torch.rsqrt(1 + t * t)
    return cos, t * cos, a - t * b, c + t * b


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
    q = cands[torch.arange(m.shape[0], device=m.device), pick]
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
    return torch.nn.functional.normalize(q, dim=-1)


def _merged_splats(total: Tensor, mu: Tensor, c6: Tensor, sh: Tensor) -> Splats:
    """float32 :class:`Splats` of merged Gaussians from their mass ``[G]``, mean ``[G, 3]``, second moment
    ``[G, 6]`` and SH ``[G, K, 3]`` (float64)."""
    quats, log_scales = _quat_scale_from_sym6(c6)
    opacity = (total / torch.exp(log_scales.sum(1))).clamp(1e-12, OPACITY_MAX)
    logits = torch.log(opacity) - torch.log1p(-opacity)
    fields = (mu, quats, log_scales, logits, sh)
    return Splats(*(t.to(torch.float32).contiguous() for t in fields))


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
def build_chunked_scene(splats: Splats, chunk_size: int = 65536, lod_levels: int = 0, lod_factor: int = 4,
                        device: torch.device | str | None = None, block_gaussians: int | None = None,
                        workers: int | None = None) -> ChunkedScene:
    """Partition ``splats`` (:func:`partition_octree`) and add ``lod_levels`` coarser levels per chunk, level ``l``
    merging runs of ``lod_factor ** l`` Gaussians (see the module docstring).

    Args:
        splats: the scene (any device; the result is float32 on the CPU).
        chunk_size: the most Gaussians in one chunk.
        lod_levels: coarser levels to add (0: level 0 only).
        lod_factor: Gaussians merged per step from one level to the next.
        device: where the arithmetic runs (the CPU when None; ``"cuda"`` is much faster for large scenes).
        block_gaussians: chunks are processed in blocks of about this many Gaussians (bounds temporary memory);
            ``BLOCK_GAUSSIANS`` on the CPU, 2^23 on a GPU, when None.
        workers: on the CPU, blocks run on this many threads, each with single-threaded torch operations
            (``torch.set_num_threads(1)`` for the duration of the build); the CPU count when None, 1 to stay on
            the calling thread with torch's own threading.
    """
    if lod_levels < 0 or lod_factor < 2:
        raise ValueError(f"lod_levels >= 0 and lod_factor >= 2 expected, got {lod_levels} and {lod_factor}")
    work = torch.device(device) if device is not None else torch.device("cpu")
    if block_gaussians is None:
        block_gaussians = BLOCK_GAUSSIANS if work.type == "cpu" else 1 << 23
    if block_gaussians < 1:
        raise ValueError(f"block_gaussians: expected >= 1, got {block_gaussians}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    splats = splats.detach().to("cpu", torch.float32)
    part = partition_octree(splats.means, chunk_size, device=work)
    nl = lod_levels + 1
    counts = [part.counts()] + [(part.counts() + lod_factor**lv - 1) // lod_factor**lv for lv in range(1, nl)]
    starts = [torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(c, 0)]) for c in counts]
    out = _BuildOutput(tuple(_empty_splats(int(s[-1]), int(splats.sh.shape[1])) for s in starts), tuple(starts),
                       *(torch.empty(part.num_chunks, nl, *shape) for shape in ((3,), (3,), (3,), (), ())))
    blocks = _chunk_blocks(counts[0], block_gaussians)

    def build(block: tuple[int, int]) -> None:
        _build_block(splats, part.order, out, block, work, lod_factor)

    if work.type == "cpu" and workers > 1 and len(blocks) > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(min(workers, len(blocks))) as pool:
                list(pool.map(build, blocks))
        finally:
            torch.set_num_threads(threads)
    else:
        for block in blocks:
            build(block)
    return ChunkedScene(out.levels, out.level_starts, out.aabb_min, out.aabb_max, out.centers, out.radii,
                        out.errors)


@dataclass(frozen=True)
class _BuildOutput:
    """Preallocated results of :func:`build_chunked_scene`, filled block by block (disjoint rows)."""

    levels: tuple[Splats, ...]
    level_starts: tuple[Tensor, ...]
    aabb_min: Tensor
    aabb_max: Tensor
    centers: Tensor
    radii: Tensor
    errors: Tensor

    def put_bounds(self, c0: int, c1: int, level: int, bounds: tuple[Tensor, ...]) -> None:
        for dst, src in zip((self.aabb_min, self.aabb_max, self.centers, self.radii, self.errors), bounds):
            dst[c0:c1, level] = src.cpu()


def _build_block(splats: Splats, order: Tensor, out: _BuildOutput, block: tuple[int, int], work: torch.device,
                 factor: int) -> None:
    """Level 0 (gathered in chunk order) and every coarser level of the chunks ``[c0, c1)``, with their bounds."""
    c0, c1 = block
    a, b = int(out.level_starts[0][c0]), int(out.level_starts[0][c1])
    base = out.levels[0]
    for name in _FIELDS:
        torch.index_select(getattr(splats, name), 0, order[a:b], out=getattr(base, name)[a:b])
    chunk = base.subset(slice(a, b)).to(work)
    counts = (out.level_starts[0][c0 + 1:c1 + 1] - out.level_starts[0][c0:c1]).to(work)
    out.put_bounds(c0, c1, 0, _entry_bounds(chunk, counts, None))
    if len(out.levels) == 1:
        return
    moments = _level0_moments(chunk)
    for level in range(1, len(out.levels)):
        index, valid, counts = _run_index(counts, factor)
        moments = _merge_runs(moments, index, valid)
        total, mu, c6, s2, sh = moments
        merged = _merged_splats(total, mu, c6, sh)
        sa, sb = int(out.level_starts[level][c0]), int(out.level_starts[level][c1])
        for name in _FIELDS:
            getattr(out.levels[level], name)[sa:sb].copy_(getattr(merged, name))
        out.put_bounds(c0, c1, level, _entry_bounds(merged, counts, s2.sqrt()))


def _empty_splats(n: int, sh_coeffs: int) -> Splats:
    return Splats(torch.empty(n, 3), torch.empty(n, 4), torch.empty(n, 3), torch.empty(n), torch.empty(n, sh_coeffs, 3))


def _chunk_blocks(counts: Tensor, block_gaussians: int) -> list[tuple[int, int]]:
    """Consecutive chunk ranges ``[c0, c1)`` of about ``block_gaussians`` Gaussians (at least one chunk each)."""
    blocks, c0, total = [], 0, 0
    for c, n in enumerate(counts.tolist()):
        if c > c0 and total + n > block_gaussians:
            blocks.append((c0, c))
            c0, total = c, 0
        total += n
    if counts.numel():
        blocks.append((c0, counts.numel()))
    return blocks


Moments = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # mass [n], mean [n, 3], second moment [n, 6], spread^2 [n], SH


def _level0_moments(splats: Splats) -> Moments:
    """float64 moments of individual Gaussians: mass, mean, covariance ``(xx, yy, zz, xy, xz, yz)``, spread 0, SH."""
    w, x, y, z = torch.nn.functional.normalize(splats.quats.double(), dim=1).unbind(1)
    r = ((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
         (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
         (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)))  # R[i][k]
    var = torch.exp(2 * splats.log_scales.double()).unbind(1)  # s_k^2
    pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    c6 = torch.stack([r[i][0] * r[j][0] * var[0] + r[i][1] * r[j][1] * var[1] + r[i][2] * r[j][2] * var[2]
                      for i, j in pairs], dim=1)  # Sigma_ij = sum_k R_ik R_jk s_k^2
    mass = gaussian_weights(splats)
    return mass, splats.means.double(), c6, torch.zeros_like(mass), splats.sh.double()


def _run_index(counts: Tensor, factor: int) -> tuple[Tensor, Tensor, Tensor]:
    """Runs of ``factor`` consecutive items inside each of the consecutive entries holding ``counts [E]`` items:
    the item of every slot ``[R, factor]`` (padding slots repeat the run's first item), whether the slot is real
    ``[R, factor]``, and the runs per entry ``[E]``."""
    device = counts.device
    runs = (counts + factor - 1) // factor
    run_entry = torch.repeat_interleave(torch.arange(counts.numel(), device=device), runs)
    first_run = torch.cumsum(runs, 0) - runs
    first_item = torch.cumsum(counts, 0) - counts
    local = (torch.arange(run_entry.numel(), device=device) - first_run[run_entry]) * factor  # [R]
    slot = local[:, None] + torch.arange(factor, device=device)  # [R, factor]
    valid = slot < counts[run_entry][:, None]
    index = first_item[run_entry][:, None] + torch.where(valid, slot, local[:, None])
    return index, valid, runs


def _merge_runs(moments: Moments, index: Tensor, valid: Tensor) -> Moments:
    """Moments of each run of ``index [R, f]`` (parallel-axis theorem): exactly those of merging the originals the
    run's members stand for. Members are gathered slot-major (``[f, R, ...]``) so that every sum runs over the
    outer dimension."""
    mass, mu, c6, s2, sh = moments
    slots = index.T.contiguous()  # [f, R]
    w = mass[slots] * valid.T  # [f, R]
    total = w.sum(0)
    wn = w / total.clamp_min(1e-300)
    mu_i = mu[slots]  # [f, R, 3]
    mean = (wn[..., None] * mu_i).sum(0)
    d = mu_i - mean
    dx, dy, dz = d.unbind(-1)
    dd = torch.stack([dx * dx, dy * dy, dz * dz, dx * dy, dx * dz, dy * dz], dim=-1)
    second = (wn[..., None] * (c6[slots] + dd)).sum(0)
    spread2 = (wn * (s2[slots] + dx * dx + dy * dy + dz * dz)).sum(0)
    colour = (wn[..., None, None] * sh[slots]).sum(0)
    return total, mean, second, spread2, colour


def _entry_bounds(splats: Splats, counts: Tensor, spread: Tensor | None) -> tuple[Tensor, ...]:
    """Per entry of ``counts [E]`` consecutive Gaussians: AABB min/max ``[E, 3]``, sphere centre ``[E, 3]`` and radius
    ``[E]``, error ``[E]`` (RMS of ``spread``; 0 when None)."""
    m, device = counts.numel(), counts.device
    chunk_of = torch.repeat_interleave(torch.arange(m, device=device), counts)
    idx3 = chunk_of[:, None].expand(-1, 3)
    means = splats.means.double()
    lo = torch.full((m, 3), math.inf, dtype=torch.float64, device=device).scatter_reduce(0, idx3, means, "amin")
    hi = torch.full((m, 3), -math.inf, dtype=torch.float64, device=device).scatter_reduce(0, idx3, means, "amax")
    empty = (counts == 0)[:, None]
    lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)
    centers = (lo + hi) / 2
    reach = opacity_aware_reach(splats).double()
    dist = (means - centers[chunk_of]).norm(dim=1) + reach
    radii = torch.zeros(m, dtype=torch.float64, device=device).scatter_reduce(0, chunk_of, dist, "amax")
    if spread is None:
        errors = torch.zeros(m, dtype=torch.float64, device=device)
    else:  # segment sums from a prefix sum (deterministic on every device)
        prefix = torch.cat([torch.zeros(1, dtype=torch.float64, device=device), torch.cumsum(spread.square(), 0)])
        ends = torch.cumsum(counts, 0)
        errors = ((prefix[ends] - prefix[ends - counts]).clamp_min(0) / counts.clamp_min(1)).sqrt()
    # float32 storage: grow the radius by the rounding of the centre and of itself, so that the stored sphere still
    # contains every member
    slack = 4 * torch.finfo(torch.float32).eps * (centers.abs().max(dim=1).values + radii)
    r32 = (radii + slack).float()
    radii32 = torch.nextafter(r32, torch.full_like(r32, math.inf))
    return lo.float(), hi.float(), centers.float(), radii32, errors.float()
