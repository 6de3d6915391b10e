"""The interface every backend implements, and the registry that finds them by name."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from ..cameras import CameraBatch
from ..splats import Splats
from ..stages import Projected, TileBins
from ..types import RenderOptions, RenderOutput, RenderStats, StageTimes


class BackendUnavailableError(RuntimeError):
    """The backend cannot run here (no CUDA, missing package, failed build); the message says why."""


class Backend(ABC):
    """A rasterizer. Subclasses set ``name`` and implement :meth:`render` or the three stages."""

    name: str = ""

    def check_available(self, device: torch.device) -> None:
        """Raise :class:`BackendUnavailableError` if this backend cannot render on ``device``."""
        return None

    @abstractmethod
    def render(self, splats: Splats, cams: CameraBatch, options: RenderOptions,
               background: torch.Tensor) -> RenderOutput:
        """Render ``splats`` for all cameras in ``cams``; ``background`` is ``[C, 3]``."""


class StagedBackend(Backend):
    """A backend with stage-level entry points (preprocess -> sort -> blend) that the frame cache can reuse.

    ``uses_covariances``: whether ``preprocess`` reads precomputed 3D covariances (so the frame cache keeps them).
    """

    uses_covariances: bool = False

    @abstractmethod
    def preprocess(self, splats: Splats, cams: CameraBatch, sh_degree: int, with_colors: bool,
                   covariances: torch.Tensor | None = None, items: torch.Tensor | None = None) -> Projected:
        """Cull, project and colour every Gaussian for every camera.

        ``covariances [N, 3, 3]``: world-space 3D covariances computed once per scene by the caller; a backend may
        use them or recompute them from ``splats`` (they are equal).
        ``items [M]``: project only these Gaussians, in this order (output slot m shows Gaussian ``items[m]``;
        ``Projected`` is then ``[C, M]``), without gradients: the frame cache's front-to-back visible set, read in
        place rather than gathered.
        """

    @abstractmethod
    def sort(self, projected: Projected, cams: CameraBatch) -> TileBins:
        """Pair Gaussians with the tiles they touch and sort the pairs by camera, tile and depth."""

    def sort_counted(self, projected: Projected, cams: CameraBatch) -> tuple[TileBins, torch.Tensor]:
        """:meth:`sort`, plus the visible Gaussians per camera ``[C]`` (a tensor on the device: no host sync).
        Backends whose sort counts them on the way return that count instead of a reduction over the items."""
        return self.sort(projected, cams), projected.visible.sum(dim=1)

    @abstractmethod
    def blend(self, projected: Projected, bins: TileBins, cams: CameraBatch, options: RenderOptions,
              background: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Blend each tile front to back. Returns ``(image [C,H,W,3] | None, alpha [C,H,W,1], depth | None)``."""

    def render(self, splats: Splats, cams: CameraBatch, options: RenderOptions,
               background: torch.Tensor) -> RenderOutput:
        clock = _StageClock(splats.device, options.timing)
        sh_degree = splats.sh_degree if options.sh_degree is None else options.sh_degree
        projected = self.preprocess(splats, cams, sh_degree, options.wants_color)
        clock.lap()
        bins, visible = self.sort_counted(projected, cams)
        clock.lap()
        image, alpha, depth = self.blend(projected, bins, cams, options, background)
        clock.lap()
        stats = RenderStats(visible=visible.tolist(), tile_keys=bins.num_pairs, times=clock.times())
        return RenderOutput(image=image, alpha=alpha, depth=depth, stats=stats, projected=projected)


class _StageClock:
    """Wall time between laps in ms; synchronises CUDA so that each lap covers its stage's kernels."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device, self.enabled = device, enabled
        self.laps: list[float] = []
        self._last = self._now()

    def _now(self) -> float:
        if self.enabled and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> None:
        if self.enabled:
            now = self._now()
            self.laps.append((now - self._last) * 1e3)
            self._last = now

    def times(self) -> StageTimes:
        if not self.enabled or len(self.laps) != 3:
            return StageTimes()
        return StageTimes(*self.laps)


class BackendRegistry:
    """Backends by name; factories run on first use so that importing gscache builds nothing."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable[[], Backend]] = {}
        self._instances: dict[str, Backend] = {}

    def register(self, name: str, factory: Callable[[], Backend]) -> None:
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Backend:
        if name not in self._factories:
            raise ValueError(f"backend: unknown backend {name!r}; known: {', '.join(['auto', *self.names()])}")
        if name not in self._instances:
            self._instances[name] = self._factories[name]()
        return self._instances[name]

    def resolve(self, name: str, device: torch.device) -> Backend:
        """The backend called ``name`` (``"auto"``: ``native`` on CUDA when it is available, else ``torch``)."""
        if name != "auto":
            backend = self.get(name)
            backend.check_available(device)
            return backend
        if device.type == "cuda" and "native" in self._factories:
            try:
                backend = self.get("native")
                backend.check_available(device)
                return backend
            except BackendUnavailableError:
                pass
        return self.get("torch")
