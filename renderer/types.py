"""Named results and options shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from torch import Tensor

if TYPE_CHECKING:
    from .frame_cache import CacheFrameStats
    from .stages import Projected

RenderMode = Literal["rgb", "depth", "rgb+depth", "alpha"]
RENDER_MODES: tuple[str, ...] = ("rgb", "depth", "rgb+depth", "alpha")

# The standard 3DGS constants, shared by every backend so that they compute the same image.
LOWPASS_2D = 0.3  # added to the diagonal of every 2D covariance (EWA low-pass / "dilation")
ALPHA_MAX = 0.99  # alpha is clamped to this
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
TRANSMITTANCE_MIN = 1e-4  # a pixel stops blending before its transmittance would fall below this
TILE_SIZE = 16


@dataclass(frozen=True)
class RenderOptions:
    """Per-call options.

    Attributes:
        sh_degree: SH degree to evaluate (<= the scene's); None means the scene's degree.
        background: background colour ``[3]`` or ``[C, 3]``, composited with the final transmittance.
        render_mode: one of ``"rgb"``, ``"depth"``, ``"rgb+depth"``, ``"alpha"``.
        timing: measure per-stage wall time (synchronising on CUDA); costs a little.
    """

    sh_degree: int | None = None
    background: Tensor | None = None
    render_mode: RenderMode = "rgb"
    timing: bool = False

    @property
    def wants_color(self) -> bool:
        return self.render_mode in ("rgb", "rgb+depth")

    @property
    def wants_depth(self) -> bool:
        return self.render_mode in ("depth", "rgb+depth")


@dataclass(frozen=True)
class StageTimes:
    """Wall time per stage in milliseconds (None where not measured)."""

    preprocess_ms: float | None = None
    sort_ms: float | None = None
    blend_ms: float | None = None

    @property
    def total_ms(self) -> float | None:
        parts = (self.preprocess_ms, self.sort_ms, self.blend_ms)
        return None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RenderStats:
    """What a frame cost.

    Attributes:
        visible: Gaussians that passed culling, per camera (list of C ints).
        tile_keys: (tile, Gaussian) pairs that were sorted and blended, all cameras together.
        times: per-stage times when ``RenderOptions.timing`` was set.
        cache: what the frame cache did (None when the frame did not go through it).
    """

    visible: list[int] = field(default_factory=list)
    tile_keys: int = 0
    times: StageTimes = field(default_factory=StageTimes)
    cache: CacheFrameStats | None = None


@dataclass(frozen=True)
class RenderOutput:
    """One rendered batch of C cameras.

    Attributes:
        image: colour ``[C, H, W, 3]`` (None in the ``depth`` and ``alpha`` modes).
        alpha: accumulated opacity ``[C, H, W, 1]``.
        depth: expected depth along the camera z axis ``[C, H, W, 1]`` (None unless a depth mode was asked for);
            0 where nothing was hit.
        stats: counts and times.
        projected: the preprocess stage's output where the backend exposes stages (None otherwise). Training
            reads ``projected.means2d`` (call ``retain_grad()`` before backward: densification needs its
            gradient) and ``projected.radii``.
    """

    image: Tensor | None  # [C, H, W, 3]
    alpha: Tensor  # [C, H, W, 1]
    depth: Tensor | None  # [C, H, W, 1]
    stats: RenderStats
    projected: Projected | None = None
