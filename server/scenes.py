"""The scene a server renders: loading it onto the device and describing it to clients."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from data import load_scene
from renderer import Splats, scene_frame

from .security import SceneDirectory


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
        center = tuple(center)
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
