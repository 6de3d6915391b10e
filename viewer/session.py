"""What ``gscache view`` does once its arguments are checked: build the :class:`AppState`, then open the window or
export a camera path to video headlessly (with a rich progress bar)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from renderer.streaming import StreamedScene

from .camera_path import CameraPath
from .state import AppState, load_view_scene, streaming_backend

if TYPE_CHECKING:
    from .cli import View


def resolve_backend(name: str) -> str:
    if name == "auto":
        return "native" if torch.cuda.is_available() else "gl"
    return name


def build_state(config: View) -> AppState:
    """Load the scene (the bundled one when none is given; a bad file raises here, before any window opens)."""
    from data import default_scene_path

    if config.remote is not None:
        return _remote_state(config)
    path = Path(config.scene) if config.scene is not None else default_scene_path()
    splats, fmt = load_view_scene(path, config.gpu_budget_mib, "drop" if config.drop_nonfinite else "error")
    backend = resolve_backend(config.backend)
    if isinstance(splats, StreamedScene) and config.backend == "auto":
        backend = streaming_backend()  # chunk files stream through a renderer backend
    state = AppState(backend=backend, mode=config.mode, stereo=config.stereo, background=tuple(config.background),
                     gpu_budget_mib=config.gpu_budget_mib)
    state.set_scene(splats, path, fmt)
    state.status = f"opened {path.name}: {len(splats):,} Gaussians"
    if config.ipd is not None:
        state.ipd = config.ipd
    if config.sh_degree is not None:
        state.sh_degree = min(config.sh_degree, splats.sh_degree)
    default_scale = 0.25 if state.backend == "torch" and not torch.cuda.is_available() else 1.0
    state.scale = config.scale if config.scale is not None else default_scale
    return state


def _remote_state(config: View) -> AppState:
    """No local scene: the frames come from the server, which also gives the framing (``GET /scenes``)."""
    spec = config.remote_spec()
    state = AppState(backend="remote", mode="rgb", stereo=config.stereo, background=tuple(config.background),
                     remote=spec, remote_url=spec.url, remote_token=spec.token or "")
    state.status = f"streaming from {spec.stream_url}"
    if config.ipd is not None:
        state.ipd = config.ipd
    state.scale = config.scale if config.scale is not None else 1.0
    return state


def run_window(config: View, console: Console) -> None:
    """Open the viewer window; with ``--frames``/``--screenshot`` exit after that many frames."""
    from .app import ViewerApp

    state = build_state(config)
    frames = config.frames if config.frames is not None else (3 if config.screenshot is not None else None)
    state.frames_left = frames
    app = ViewerApp(state, config.width, config.height, frames, config.screenshot)
    try:
        app.run()
    finally:
        state.close()
    if state.error:
        console.print(f"viewer: last error: {state.error}", markup=False)
    if config.screenshot is not None:
        if not Path(config.screenshot).is_file():
            raise OSError(f"{config.screenshot}: the screenshot was not written ({state.error or 'no frame'})")
        console.print(f"wrote {config.screenshot}")


def export_video_headless(config: View, console: Console) -> None:
    """Render ``config.export_path`` into ``config.out`` in a standalone GL context."""
    from .export import ExportSpec, VideoExport
    from .gl_context import standalone_context
    from .pipeline import FramePipeline

    path = CameraPath.load(config.export_path)
    state = build_state(config)
    width, height = config.width // 2 * 2, config.height // 2 * 2
    ctx = standalone_context(config.gl)
    pipeline = FramePipeline(ctx, state.backend)
    try:
        pipeline.set_scene(state.scene.splats)
        spec = ExportSpec(Path(config.out), width, height, state.frame_request(width, height))
        job = VideoExport(pipeline, path, spec)
        columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("export", total=job.total)
            try:
                while not job.step():
                    progress.advance(task)
            except BaseException:
                job.cancel()
                raise
        console.print(f"wrote {config.out} ({job.total} frames, {width}x{height}, {config.stereo}, "
                      f"backend {pipeline.backend})")
    finally:
        pipeline.release()
        ctx.release()
        state.close()
