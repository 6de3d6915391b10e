"""Initial Gaussians for training: :mod:`data.init_points` through open3d where it is installed, else the same
computations with SciPy's KD-tree (open3d's wheel is too large to carry to a GPU machine that lacks it).

Both are exact nearest-neighbour searches, so the two paths give the same Gaussians up to ties;
``tests/test_train_fallback.py`` compares them.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import torch

from data.dataset import PointCloud
from data.init_points import random_points, splats_from_points
from renderer import Splats

from .config import InitConfig


def have_open3d() -> bool:
    """Whether open3d can be imported (found on the path; not imported here)."""
    try:
        return importlib.util.find_spec("open3d") is not None
    except (ImportError, ValueError):
        return False


def remove_outliers_scipy(points: PointCloud, nb_neighbors: int = 20, std_ratio: float = 2.0) -> PointCloud:
    """open3d's ``remove_statistical_outlier`` with SciPy: the mean distance of each point to its ``nb_neighbors``
    nearest points (itself included, as open3d counts it) must be under mean + ``std_ratio`` x std (Bessel) of all
    such means, and above 0."""
    from scipy.spatial import cKDTree

    if len(points) <= nb_neighbors:
        return points
    xyz = points.xyz.double().numpy()
    dist, _ = cKDTree(xyz).query(xyz, k=nb_neighbors)
    mean = dist.mean(axis=1)
    valid = mean > 0
    cloud_mean = mean[valid].mean()
    std = math.sqrt(((mean[valid] - cloud_mean) ** 2).sum() / max(int(valid.sum()) - 1, 1))
    kept = torch.from_numpy(np.flatnonzero(valid & (mean < cloud_mean + std_ratio * std)))
    return PointCloud(points.xyz[kept], points.rgb[kept])


def knn_mean_sq_dist_scipy(xyz: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean squared distance of each point to its ``k`` nearest other points ``[P]`` float64."""
    from scipy.spatial import cKDTree

    if len(xyz) < 2:
        return torch.ones(len(xyz), dtype=torch.float64)
    pts = np.ascontiguousarray(xyz.double().numpy())
    k_eff = min(k + 1, len(pts))
    dist, _ = cKDTree(pts).query(pts, k=k_eff)  # the point itself first
    return torch.from_numpy(dist[:, 1:] ** 2).mean(dim=1)


def splats_from_points_scipy(points: PointCloud, sh_degree: int, opacity: float, scale_factor: float) -> Splats:
    """:func:`data.init_points.splats_from_points` with the SciPy neighbour search."""
    return splats_from_points(points, sh_degree, opacity, scale_factor, knn=knn_mean_sq_dist_scipy)


def initial_splats_from(points: PointCloud | None, init: InitConfig, sh_degree: int, seed: int,
                        use_open3d: bool | None = None) -> Splats:
    """Gaussians from ``points`` (statistical outliers removed) or random points where there are none."""
    use_open3d = have_open3d() if use_open3d is None else use_open3d
    random = points is None or len(points) == 0
    if random:
        points = random_points(init.random_points, init.random_extent, seed)
    if use_open3d:
        from data.init_points import remove_outliers, splats_from_points

        if not random and init.outlier_neighbors > 0:
            points = remove_outliers(points, init.outlier_neighbors, init.outlier_std).points
        return splats_from_points(points, sh_degree, init.opacity, init.scale_factor)
    if not random and init.outlier_neighbors > 0:
        points = remove_outliers_scipy(points, init.outlier_neighbors, init.outlier_std)
    return splats_from_points_scipy(points, sh_degree, init.opacity, init.scale_factor)
