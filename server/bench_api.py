"""``POST /bench``: a bounded benchmark request turned into a ``server.bench.BenchConfig`` and run on the server."""

from __future__ import annotations

from pathlib import Path

from .bench import PATH_FRAMES, BenchConfig
from .config import ServerLimits
from .errors import InvalidRequest, PayloadTooLarge
from .schemas import BenchRequest


def bench_config(request: BenchRequest, scene_file: Path, backend: str, device: str) -> BenchConfig:
    """The harness config for ``request`` on ``scene_file`` (already confined to the served directory).

    Renderers default to ``[backend]`` (the server's); nothing is written and no progress bar is drawn.

    Raises:
        InvalidRequest: what ``BenchConfig`` refuses, with its reason.
    """
    scene_id = str(scene_file) + (f"-g{request.grid}" if request.grid > 1 else "") + ("-sh3" if request.sh3 else "")
    try:
        return BenchConfig(
            scenes=(scene_id,), paths=tuple(request.paths), renderers=tuple(request.renderers or [backend]),
            reference=request.reference, quality=request.quality, width=request.width, height=request.height,
            eyes=request.eyes, fov_x_deg=request.fov_x_deg, warmup_frames=request.warmup_frames,
            timed_frames=request.timed_frames, cover_path=request.cover_path, device=device, plot=False,
            progress=False, command="POST /bench " + request.model_dump_json(exclude_defaults=True),
        )
    except ValueError as err:
        raise InvalidRequest(str(err)) from None


def bench_megapixels(config: BenchConfig) -> float:
    """Pixels (millions) the run renders: warm-up and timed frames per renderer, plus quality renders."""
    frames = 0
    for path in config.paths:
        timed = config.frames_for(path)
        frames += len(config.renderers) * (config.warmup_frames + timed)
        if config.quality:
            others = [n for n in config.renderers if n != config.reference_name]
            frames += (len(others) + 1) * min(timed, PATH_FRAMES[path]) if others else 0
    return frames * config.eyes * config.width * config.height / 1e6


def check_bench_bounds(config: BenchConfig, limits: ServerLimits) -> None:
    """Refuse runs longer than the server allows (413 naming the bound)."""
    longest = max(config.frames_for(path) for path in config.paths)
    if longest > limits.bench_max_frames:
        raise PayloadTooLarge(f"bench: {longest} timed frames per case; this server allows at most "
                              f"{limits.bench_max_frames}")
    total = bench_megapixels(config)
    if total > limits.bench_max_megapixels:
        raise PayloadTooLarge(f"bench: the run would render {total:,.0f} megapixels; this server allows at most "
                              f"{limits.bench_max_megapixels:,.0f} (fewer frames, renderers or pixels)")
