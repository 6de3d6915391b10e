"""``AppState``: everything the viewer knows, in one object that the GUI functions and GL callbacks take.

GL objects live in ``AppState.pipeline`` (created by the app's ``post_init``, freed in ``before_exit``); everything
else here works without a window, which is how the tests drive it. Every change that alters the image calls
:meth:`AppState.mark_dirty`; the 3D pass renders only when something is dirty (or an async sort is finishing).
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.scene_cameras import SceneCameras, open_scene_cameras, resolve_scene_file
from renderer import Camera, Splats, intrinsics_from_fov
from renderer.streaming import StreamedScene

from .camera_control import CameraController
from .camera_path import CameraPath, Keyframe
from .export import ExportSpec, VideoExport, save_png
from .pipeline import FramePipeline, FrameRequest, FrameResult, ViewSpec
from .remote import RemoteSource, RemoteSpec
from .sources import REMOTE, RenderSettings

HISTORY = 240


def scene_center_extent(splats: Splats | StreamedScene, quantile: float = 0.005) -> tuple[list[float], float]:
    """Centre and extent of a scene (central quantiles of the means; the framing ``gscache render`` uses; a chunk
    file's from its chunk bounds)."""
    from renderer import scene_frame

    if isinstance(splats, StreamedScene):
        return splats.frame()
    return scene_frame(splats, quantile)


def load_view_scene(path: str | os.PathLike[str], gpu_budget_mib: float | None = None,
                    nonfinite: str = "error") -> tuple[Splats | StreamedScene, str]:
    """A scene file's Gaussians and format, or for a chunk file (``.gschunks``) a :class:`StreamedScene` under
    ``gpu_budget_mib`` (raises ``ValueError`` without a budget or with one too small for its largest chunk)."""
    from data import load_scene_report
    from data.chunk_file import is_chunk_file

    path = resolve_scene_file(path)
    if is_chunk_file(path):
        return StreamedScene.open(path, gpu_budget_mib), "gschunks"
    loaded = load_scene_report(path, nonfinite=nonfinite)
    return loaded.splats, loaded.format


def _home_view(home: object, extent: float) -> CameraController | None:
    """The server's starting view of its scene (``home`` of ``GET /scenes``: a capture camera's pose, field of
    view, up and target); None when the scene has none or it is malformed."""
    if not isinstance(home, dict):
        return None
    try:
        up = [float(v) for v in home["up"]]
        target = torch.tensor([float(v) for v in home["target"]], dtype=torch.float64)
        w2c = torch.tensor(home["world_to_camera"], dtype=torch.float64)
        camera = Camera(w2c, intrinsics_from_fov(1000, 1000, float(home["fov_x_deg"])), 1000, 1000)
    except (KeyError, TypeError, ValueError, RuntimeError):
        return None
    if len(up) != 3 or target.shape != (3,) or not all(map(math.isfinite, up)):
        return None
    return CameraController.through(camera, up, target, extent)


@dataclass
class SceneSlot:
    """The scene on show and where it came from.

    Attributes:
        capture: the scene's capture cameras (a training run's or ``<scene>.cameras.json``), None without.
        center: the centre of its framing (``scene_center_extent``), kept so that a reset does not recompute it.
    """

    path: Path | None = None
    splats: Splats | StreamedScene | None = None
    fmt: str = ""
    extent: float = 1.0
    capture: SceneCameras | None = None
    center: list[float] | None = None


@dataclass
class Timings:
    """Recent render and UI frame times (ms), for the plot."""

    render_ms: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    ui_ms: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    last: FrameResult | None = None


@dataclass
class AppState:
    """The viewer's state (see the module docstring)."""

    scene: SceneSlot = field(default_factory=SceneSlot)
    camera: CameraController = field(default_factory=CameraController)
    backend: str = "gl"
    scale: float = 1.0
    sh_degree: int = 3
    mode: str = "rgb"
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stereo: str = "mono"
    ipd: float = 0.064
    path: CameraPath = field(default_factory=CameraPath)
    selected_keyframe: int = -1
    playing: bool = False
    play_time: float = 0.0
    path_file: str = "camera_path.json"
    export: VideoExport | None = None
    export_out: str = "path.mp4"
    export_size: tuple[int, int] = (1280, 720)
    screenshot_file: str = "screenshot.png"
    error: str | None = None
    status: str = ""
    timings: Timings = field(default_factory=Timings)
    pipeline: FramePipeline | None = None
    dirty: bool = True
    frames_left: int | None = None
    exit_screenshot: Path | None = None
    file_dialog: object | None = None
    remote: RemoteSpec | None = None
    remote_url: str = "ws://127.0.0.1:8765"
    remote_token: str = ""
    gpu_budget_mib: float | None = None
    capture_index: int = 0
    _remote_scene_key: tuple | None = None
    _loader: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "scene-loader"))
    _pending_load: tuple[Path, Future] | None = None
    _screenshot_request: Path | None = None
    _uploaded: Splats | StreamedScene | None = None

    # ----- scene ------------------------------------------------------------------------------
    def open_scene(self, path: str | os.PathLike[str], wait: bool = False) -> None:
        """Load a scene file (or open a chunk file under :attr:`gpu_budget_mib`) on a worker thread; errors end up
        in :attr:`error`, never in an exception, and keep the current scene."""
        path = Path(path)
        self.status = f"loading {path.name} ..."
        self._pending_load = (path, self._loader.submit(load_view_scene, path, self.gpu_budget_mib))
        if wait:
            self._pending_load[1].exception()
            self.poll()

    def set_scene(self, splats: Splats | StreamedScene, path: Path | None = None, fmt: str = "") -> None:
        """Show ``splats`` and frame it (the default view); a chunk file switches a ``gl``/``remote`` backend to
        ``torch`` (``native`` on CUDA), which stream it."""
        if isinstance(splats, StreamedScene) and self.backend not in ("torch", "native"):
            self.set_backend(streaming_backend())
        center, extent = scene_center_extent(splats)
        capture = None
        if path is not None:
            try:
                path = resolve_scene_file(path)  # a training run's folder: its scene.ply
                capture = open_scene_cameras(path)
            except (OSError, ValueError) as err:  # the scene still opens, framed from its bounds
                self.error = f"capture cameras ignored: {err}"
        self.scene = SceneSlot(path, splats, fmt, extent, capture, center)
        self.capture_index = 0
        self.reset_view()
        self.ipd = 0.064 * extent
        self.sh_degree = splats.sh_degree
        self.error = None
        self.mark_dirty()

    @property
    def loading(self) -> bool:
        return self._pending_load is not None

    def on_files_dropped(self, paths: list[str]) -> None:
        """Drag and drop: open the first dropped file (a scene, or a camera path ``.json``)."""
        if not paths:
            return
        first = Path(paths[0])
        if first.suffix.lower() == ".json":
            self.load_path(first)
        else:
            self.open_scene(first)

    def poll(self) -> None:
        """Collect a finished load, a closed file dialog and remote frames; call once per UI frame."""
        self._poll_remote()
        if self._pending_load is not None and self._pending_load[1].done():
            path, future = self._pending_load
            self._pending_load = None
            err = future.exception()
            if err is None:
                splats, fmt = future.result()
                self.set_scene(splats, path, fmt)
                self.status = f"opened {path.name}: {len(splats):,} Gaussians"
            else:
                self.error = f"cannot open {path}: {err}"
                self.status = ""
        dialog = self.file_dialog
        if dialog is not None and dialog.ready(0):
            self.file_dialog = None
            chosen = dialog.result()
            if chosen:
                self.on_files_dropped(list(chosen))

    # ----- remote server ----------------------------------------------------------------------
    @property
    def remote_source(self) -> RemoteSource | None:
        """The frame source when it is the render server's stream."""
        source = self.pipeline.source if self.pipeline is not None else None
        return source if isinstance(source, RemoteSource) else None

    @property
    def remote_status(self) -> tuple[str, str] | None:
        """``(level, text)`` of the stream: ``ok``/``busy``/``bad`` and connecting / connected / lost: reason;
        reconnecting in N s / refused: reason, or a refused size; None when not streaming."""
        source = self.remote_source
        return source.status_line() if source is not None else None

    def connect_remote(self, url: str | None = None, token: str | None = None) -> None:
        """Stream from the render server at ``url`` (a new connection; errors end up in :attr:`error`)."""
        url = self.remote_url if url is None else url
        token = (self.remote_token or None) if token is None else token
        try:
            base = self.remote or RemoteSpec(url)
            spec = RemoteSpec(url, token, base.format, base.quality, base.backoff_s, base.open_timeout_s)
        except ValueError as err:
            self.error = str(err)
            return
        self.remote, self.remote_url, self.remote_token = spec, url, token or ""
        self._remote_scene_key = None
        if self.pipeline is not None:
            self.pipeline.remote = spec
        self.set_backend(REMOTE)

    def _poll_remote(self) -> None:
        source = self.remote_source
        if source is None:
            return
        if source.has_new_frame:
            self.mark_dirty()
        client = source.client
        client.gated = True  # poses wait for the framing below (else the first one shows the default camera)
        seq, info = client.connection()
        key = None if info is None else (info.get("name"), info.get("version"), tuple(info.get("center", ())))
        if key is not None and key != self._remote_scene_key:
            self._remote_scene_key = key
            self._frame_remote_scene(info)
        if source.framed_seq != seq:  # a new connection: the next render requests a pose with this framing and
            source.framed_seq = seq   # acknowledges it, which lets poses flow
            self.mark_dirty()

    def _frame_remote_scene(self, info: dict) -> None:
        """Frame the server's scene (the default view), unless a local scene is open and framed already."""
        try:
            center = [float(v) for v in info["center"]][:3]
            extent = float(info["extent"])
        except (KeyError, TypeError, ValueError):
            return
        if len(center) != 3 or not extent > 0:
            return
        if self.scene.splats is None:
            self.scene = SceneSlot(None, None, "remote", extent)
        home = _home_view(info.get("home"), extent)
        self.camera = home or CameraController.framing(center, extent, self.camera.fov_x_deg)
        self.ipd = 0.064 * extent
        self.mark_dirty()

    # ----- camera -----------------------------------------------------------------------------
    def mark_dirty(self) -> None:
        self.dirty = True

    def reset_view(self) -> None:
        """The scene's default view: its current capture camera where it has capture cameras, else the framing
        of its bounds."""
        if self.scene.capture is not None:
            self.snap_to_capture(self.capture_index)
            return
        if self.scene.splats is not None:
            center, extent = self.scene.center, self.scene.extent
            if center is None:
                center, extent = scene_center_extent(self.scene.splats)
            mode = self.camera.mode
            self.camera = CameraController.framing(center, extent, self.camera.fov_x_deg)
            self.camera.mode = mode
        self.mark_dirty()

    def snap_to_capture(self, index: int) -> None:
        """Look through capture camera ``index`` (wrapped around): its pose and horizontal field of view, the
        capture's up, and an orbit centre where the capture cameras look."""
        capture = self.scene.capture
        if capture is None:
            return
        self.capture_index = index % len(capture)
        self.camera = CameraController.through(capture.cameras[self.capture_index].camera, capture.up(),
                                               capture.target(), self.scene.extent, self.camera.mode)
        self.mark_dirty()

    def orbit(self, dx: float, dy: float) -> None:
        self.camera.orbit(dx, dy)
        self.mark_dirty()

    def pan(self, dx: float, dy: float) -> None:
        self.camera.pan(dx, dy)
        self.mark_dirty()

    def dolly(self, steps: float) -> None:
        self.camera.dolly(steps)
        self.mark_dirty()

    def look(self, dx: float, dy: float) -> None:
        self.camera.look(dx, dy)
        self.mark_dirty()

    def move(self, forward: float, right: float, up: float, dt: float) -> None:
        if forward or right or up:
            self.camera.move(forward, right, up, dt)
            self.mark_dirty()

    def view(self) -> ViewSpec:
        near = max(1e-4, 1e-3 * self.scene.extent)
        return ViewSpec(self.camera.world_to_camera(), self.camera.fov_x_deg, near, 1e10)

    def frame_request(self, width: int, height: int) -> FrameRequest:
        mode = "rgb" if self.backend == REMOTE else self.mode  # the server streams colour only
        settings = RenderSettings(mode, self.sh_degree, tuple(self.background))
        return FrameRequest(self.view(), width, height, settings, self.stereo, self.ipd, self.scale)

    # ----- rendering (GL context current) ------------------------------------------------------
    def set_backend(self, name: str) -> None:
        """Switch the frame source; an unavailable one leaves the current and sets :attr:`error`."""
        if self.pipeline is None:
            self.backend = name
            return
        if name == REMOTE and self.pipeline.remote is None:
            self.pipeline.remote = self.remote
        try:
            self.pipeline.set_backend(name)
        except (ValueError, RuntimeError) as err:
            self.error = f"backend {name!r}: {err}"
            return
        self.backend = name
        if name == "torch" and self.scale > 0.5:
            self.scale = 0.25  # the CPU reference needs a reduced resolution to stay interactive
        self._uploaded = self.scene.splats
        self.mark_dirty()

    def render_if_dirty(self, width: int, height: int) -> bool:
        """Render into the pipeline's output if anything changed; returns whether a frame was rendered."""
        if self.pipeline is None or width < 1 or height < 1:
            return False
        if self.scene.splats is not None and self._uploaded is not self.scene.splats:
            try:
                self.pipeline.set_scene(self.scene.splats)
            except (ValueError, RuntimeError) as err:
                self.error = f"cannot show {self.scene.path}: {err}"
            self._uploaded = self.scene.splats
        if not self.dirty and self.pipeline.output_size == (width, height):
            return False
        self.dirty = False
        try:
            result = self.pipeline.render(self.frame_request(width, height))
        except (ValueError, RuntimeError) as err:
            self.error = f"render failed: {err}"
            return False
        self.timings.render_ms.append(result.ms)
        self.timings.last = result
        if result.pending:
            self.dirty = True  # a newer depth order is coming: draw again
        if self._screenshot_request is not None and not result.pending:
            self._write_screenshot(self._screenshot_request)
            self._screenshot_request = None
        return True

    def request_screenshot(self, path: str | os.PathLike[str]) -> None:
        """Save the 3D view (without the UI) as PNG after the next render."""
        self._screenshot_request = Path(path)
        self.mark_dirty()

    def _write_screenshot(self, path: Path) -> None:
        try:
            save_png(path, self.pipeline.read_output())
            self.status = f"saved {path}"
        except (ValueError, OSError) as err:
            self.error = f"screenshot: {err}"

    @property
    def screenshot_pending(self) -> bool:
        return self._screenshot_request is not None

    # ----- camera path ------------------------------------------------------------------------
    def record_keyframe(self) -> None:
        index = self.selected_keyframe + 1 if self.selected_keyframe >= 0 else None
        self.path.add(Keyframe(self.camera.world_to_camera(), self.camera.fov_x_deg), index)
        self.selected_keyframe = len(self.path.keyframes) - 1 if index is None else index

    def delete_keyframe(self, index: int | None = None) -> None:
        index = self.selected_keyframe if index is None else index
        try:
            self.path.remove(index)
        except ValueError as err:
            self.error = str(err)
            return
        self.selected_keyframe = min(index, len(self.path.keyframes) - 1)

    def go_to_keyframe(self, index: int) -> None:
        key = self.path.keyframes[index]
        self.selected_keyframe = index
        self.camera.fov_x_deg = key.fov_x_deg
        self.camera.set_pose(key.world_to_camera)
        self.mark_dirty()

    def save_path(self, file: str | os.PathLike[str]) -> None:
        try:
            self.path.save(file)
            self.status = f"saved {len(self.path.keyframes)} keyframes to {file}"
        except OSError as err:
            self.error = f"cannot save {file}: {err}"

    def load_path(self, file: str | os.PathLike[str]) -> None:
        try:
            self.path = CameraPath.load(file)
        except (ValueError, OSError) as err:
            self.error = str(err)
            return
        self.selected_keyframe = len(self.path.keyframes) - 1
        self.status = f"loaded {len(self.path.keyframes)} keyframes from {file}"

    def toggle_playback(self) -> None:
        if not self.playing and len(self.path.keyframes) < 2:
            self.error = "playback needs at least two keyframes"
            return
        self.playing = not self.playing
        if self.playing and self.play_time >= self.path.duration:
            self.play_time = 0.0

    def advance(self, dt: float) -> None:
        """Move playback by ``dt`` seconds (loops) and step a running export; call once per UI frame."""
        if self.playing and self.path.keyframes:
            self.play_time = math.fmod(self.play_time + dt, max(self.path.duration, 1e-9))
            key = self.path.sample(self.play_time)
            self.camera.fov_x_deg = key.fov_x_deg
            self.camera.set_pose(key.world_to_camera)
            self.mark_dirty()

    # ----- export -----------------------------------------------------------------------------
    def start_export(self, out: str | os.PathLike[str] | None = None, size: tuple[int, int] | None = None) -> None:
        """Start a video export of the camera path (stepped by :meth:`step_export`)."""
        if self.pipeline is None:
            self.error = "video export needs the GL pipeline"
            return
        out = Path(out or self.export_out)
        width, height = size or self.export_size
        template = self.frame_request(width, height)
        try:
            self.export = VideoExport(self.pipeline, self.path, ExportSpec(out, width, height, template))
        except (ValueError, OSError) as err:
            self.error = str(err)
            self.export = None

    def step_export(self) -> None:
        if self.export is None:
            return
        try:
            finished = self.export.step()
        except (ValueError, OSError, RuntimeError) as err:
            self.export.cancel()
            self.error, self.export = f"video export failed: {err}", None
            return
        if finished:
            self.status = f"wrote {self.export.spec.out} ({self.export.total} frames)"
            self.export = None
        self.mark_dirty()  # the export drew into the shared output

    def cancel_export(self) -> None:
        if self.export is not None:
            self.export.cancel()
            self.export = None
            self.status = "export cancelled"
            self.mark_dirty()

    @property
    def animating(self) -> bool:
        """Frames must keep coming without input events (playback, export, loading, a pending sort)."""
        return self.playing or self.export is not None or self.loading or self.dirty or self.frames_left is not None

    def close(self) -> None:
        """Release everything that is not GL (the loader thread)."""
        self._loader.shutdown(wait=False, cancel_futures=True)


def streaming_backend() -> str:
    """The backend a chunk file is shown with: ``native`` on CUDA, else ``torch``."""
    import torch

    return "native" if torch.cuda.is_available() else "torch"
