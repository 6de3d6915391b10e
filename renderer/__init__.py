"""gscache's core: the scene model, cameras, ``render()``, its backends and the frame cache."""

from .backends import Backend, BackendUnavailableError, StagedBackend, default_registry
from .cameras import Camera, CameraBatch, StereoRig, intrinsics_from_fov, look_at, stack_cameras
from .frame_cache import CacheConfig, CacheFrameStats, FrameCache
from .paths import PathSpec, head_path, orbit_path, scene_frame
from .render import render
from .splats import Splats
from .stages import Projected, TileBins
from .types import RenderMode, RenderOptions, RenderOutput, RenderStats, StageTimes

__all__ = [
    "Backend", "BackendUnavailableError", "CacheConfig", "CacheFrameStats", "Camera", "CameraBatch", "FrameCache",
    "PathSpec", "Projected", "RenderMode", "RenderOptions", "RenderOutput", "RenderStats", "Splats", "StageTimes",
    "StagedBackend", "StereoRig", "TileBins", "default_registry", "head_path", "intrinsics_from_fov", "look_at",
    "orbit_path", "render", "scene_frame", "stack_cameras",
]
