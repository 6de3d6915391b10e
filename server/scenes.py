"""The scene a server renders: loading it onto the device and describing it to clients."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from data import load_scene
from renderer import Splats

from .security import SceneDirectory

FRAME_SAMPLE = 200_000  # Gaussians sampled to find a scene's centre and extent


@dataclass(frozen=True)
class LoadedScene:
    """A scene on the render device.

    Attributes:
        name: how clients refer to it (its path relative to the served directory, or the file name).
        path: the file it was read from.
        splats: the Gaussians, on the render device.
        center: centre of the central 99% of the means ``(x, y, z)``; extent: their largest side.
        version: increases with every load, so that caches keyed on it see a new scene.
    """

    name: str
    path: Path
    splats: Splats
    center: tuple[float, float, float]
    extent: float
    version: int

    def describe(self) -> dict[str, object]:
        """What ``GET /scenes`` and ``POST /scenes/load`` say about it (no absolute paths)."""
        return {"name": self.name, "gaussians": len(self.splats), "sh_degree": self.splats.sh_degree,
                "center": list(self.center), "extent": self.extent, "version": self.version}


def scene_frame(splats: Splats, quantile: float = 0.005) -> tuple[tuple[float, float, float], float]:
    """Centre and extent of the central quantiles of the means (stray floaters ignored); ``((0,0,0), 1)`` if empty."""
    if len(splats) == 0:
        return (0.0, 0.0, 0.0), 1.0
    means = splats.means.detach().float().cpu()
    if len(means) > FRAME_SAMPLE:
        means = means[torch.randperm(len(means), generator=torch.Generator().manual_seed(0))[:FRAME_SAMPLE]]
    lo, hi = torch.quantile(means, quantile, dim=0), torch.quantile(means, 1 - quantile, dim=0)
    extent = float((hi - lo).max())
    center = tuple(float(v) for v in (lo + hi) / 2)
    return center, extent if extent > 0 else 1.0  # type: ignore[return-value]


class SceneStore:
    """The served directory and the current scene. Loads run on the render thread; swaps are atomic."""

    def __init__(self, directory: SceneDirectory, device: torch.device) -> None:
        self.directory = directory
        self.device = device
        self.current: LoadedScene | None = None
        self._versions = itertools.count(1)
        self._lock = threading.Lock()

    def load(self, path: Path, name: str, drop_nonfinite: bool = False) -> LoadedScene:
        """Read ``path`` onto the device and make it the current scene (blocking; call on the render thread).

        Raises:
            data.SceneFormatError: the file is unreadable or malformed (a ``ValueError``).
        """
        splats = load_scene(path, nonfinite="drop" if drop_nonfinite else "error").to(self.device)
        center, extent = scene_frame(splats)
        with self._lock:
            scene = LoadedScene(name, path, splats, center, extent, next(self._versions))
            self.current = scene
        return scene

    def name_for(self, path: Path) -> str:
        """``path`` relative to the served directory when it lies under it, else its file name."""
        try:
            return path.resolve().relative_to(self.directory.root).as_posix()
        except ValueError:
            return path.name
