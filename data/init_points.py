"""Initial Gaussians from points: SfM points cleaned with open3d, or random points in a box.

As 3DGS: one Gaussian per point, isotropic scale ``log(sqrt(mean squared distance to the 3 nearest neighbours))``,
identity rotation, opacity ``logit(0.1)``, SH DC from the point colour and higher bands zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from renderer import Splats
from renderer.splats import SH_C0, SH_COEFFS_FOR_DEGREE

from .dataset import PointCloud


class OutlierFilter(NamedTuple):
    """Result of :func:`remove_outliers`.

    Attributes:
        points: the kept points.
        kept: indices of the kept points in the input ``[P']`` (int64).
    """

    points: PointCloud
    kept: Tensor  # [P']


def remove_outliers(points: PointCloud, nb_neighbors: int = 20, std_ratio: float = 2.0) -> OutlierFilter:
    """Drop points whose mean distance to their ``nb_neighbors`` neighbours is over ``std_ratio`` std of the mean
    (open3d ``remove_statistical_outlier``)."""
    import open3d as o3d

    if len(points) <= nb_neighbors:
        return OutlierFilter(points, torch.arange(len(points)))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.xyz.double().numpy()))
    _, index = pcd.remove_statistical_outlier(nb_neighbors=nb_neighbors, std_ratio=std_ratio)
    kept = torch.as_tensor(np.asarray(index, dtype=np.int64))
    return OutlierFilter(PointCloud(points.xyz[kept], points.rgb[kept]), kept)


def knn_mean_sq_dist(xyz: Tensor, k: int = 3) -> Tensor:
    """Mean squared distance of each point to its ``k`` nearest other points ``[P]`` (open3d's kNN search)."""
    import open3d as o3d

    if len(xyz) < 2:
        return torch.ones(len(xyz), dtype=torch.float64)
    pts = o3d.core.Tensor(np.ascontiguousarray(xyz.double().numpy()))
    nns = o3d.core.nns.NearestNeighborSearch(pts)
    nns.knn_index()
    k_eff = min(k + 1, len(xyz))
    _, dist2 = nns.knn_search(pts, k_eff)  # squared distances, the point itself first
    return torch.as_tensor(dist2.numpy()[:, 1:], dtype=torch.float64).mean(dim=1)


def random_points(n: int, extent: float = 1.3, seed: int = 0) -> PointCloud:
    """``n`` points uniform in ``[-extent, extent]^3`` with uniform random colours (3DGS's NeRF-synthetic init)."""
    g = torch.Generator().manual_seed(seed)
    xyz = (torch.rand((n, 3), generator=g) * 2.0 - 1.0) * extent
    return PointCloud(xyz, torch.rand((n, 3), generator=g))


def splats_from_points(points: PointCloud, sh_degree: int = 3, opacity: float = 0.1, scale_factor: float = 1.0,
                       knn: Callable[[Tensor], Tensor] | None = None) -> Splats:
    """Initial Gaussians, one per point (see the module docstring); ``scale_factor`` multiplies the NN scale.
    ``knn`` maps ``[N, 3]`` points to their ``[N]`` mean squared neighbour distances (default: open3d's search,
    :func:`knn_mean_sq_dist`)."""
    if len(points) == 0:
        raise ValueError("points: no points to initialise from")
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"opacity: expected a value in (0, 1), got {opacity}")
    n = len(points)
    dist = (knn or knn_mean_sq_dist)(points.xyz).clamp_min(1e-7).sqrt() * scale_factor
    log_scales = torch.log(dist).float()[:, None].repeat(1, 3)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    logits = torch.full((n,), math.log(opacity / (1.0 - opacity)))
    sh = torch.zeros(n, SH_COEFFS_FOR_DEGREE[sh_degree], 3)
    sh[:, 0] = (points.rgb.float() - 0.5) / SH_C0
    return Splats(points.xyz.float().contiguous(), quats, log_scales.contiguous(), logits, sh)
