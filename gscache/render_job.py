"""``gscache render`` and ``gscache demo``: render a scene from its capture cameras, an orbit or given cameras into
PNG files."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from data import default_scene_path, load_scene
from data.scene_cameras import (
    SceneCameras,
    camera_at_size,
    open_scene_cameras,
    resolve_scene_file,
    scene_cameras_candidates,
)
from renderer import Camera, PathSpec, Splats, StereoRig, intrinsics_from_fov, look_at, orbit_path, render, scene_frame


@dataclass
class RenderConfig:
    """Render a scene to PNG files and print frame times."""

    scene: Path | None = None
    """Scene file (.ply, .compressed.ply, .splat, .spz) or a training run's folder; the bundled scene when
    omitted."""
    out: Path = Path("renders")
    """Output directory (created if missing)."""
    width: int = 640
    height: int = 480
    frames: int = 8
    """Number of frames: orbit poses or capture cameras (ignored with --cameras)."""
    fov: float = 60.0
    """Horizontal field of view in degrees for orbit cameras (capture cameras keep their own)."""
    distance: float = 1.4
    """Orbit radius as a multiple of the scene's extent."""
    elevation: float = 0.3
    """Orbit height above the centre as a fraction of the radius."""
    up: tuple[float, float, float] = (0.0, -1.0, 0.0)
    """World up direction (3DGS/COLMAP scenes are y-down)."""
    cameras: Path | None = None
    """JSON file of cameras to render instead of the orbit (see README: camera files)."""
    path: Literal["auto", "orbit", "capture"] = "auto"
    """Views without --cameras: ``capture`` renders --frames of the scene's capture cameras (spread over the
    capture; found as ``<scene>.cameras.json`` or a training run's ``cameras.json``), ``orbit`` circles the scene's
    bounds, ``auto`` takes the capture cameras where the scene has them, else the orbit."""
    backend: str = "auto"
    """auto, torch, native, gsplat."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    stereo: bool = False
    """Render both eyes and write them side by side."""
    ipd: float | None = None
    """Inter-pupillary distance in scene units; 0.064 x extent when omitted."""
    sh_degree: int | None = None
    mode: Literal["rgb", "depth", "rgb+depth", "alpha"] = "rgb"
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    drop_nonfinite: bool = False
    """Drop Gaussians with NaN/Inf values instead of refusing the file."""
    quiet: bool = False


@dataclass(frozen=True)
class RenderRun:
    """What a render job wrote and how long each frame took."""

    files: list[Path] = field(default_factory=list)
    frame_ms: list[float] = field(default_factory=list)
    backend: str = ""
    device: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.frame_ms) if self.frame_ms else 0.0


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but PyTorch sees no CUDA device")
    return torch.device(device)


def orbit_views(config: RenderConfig, splats: Splats) -> list[Camera | StereoRig]:
    """The orbit of ``config`` around the scene: stereo rigs or single cameras."""
    center, extent = scene_frame(splats)
    spec = PathSpec(center=center, extent=extent, width=config.width, height=config.height, fov_x_deg=config.fov,
                    up=config.up, ipd_scale=(config.ipd / extent) if config.ipd is not None else 0.064)
    spec_radius = config.distance * extent
    rigs = []
    for rig in orbit_path(spec, frames=config.frames, step_deg=360.0 / max(config.frames, 1)):
        rigs.append(_at_radius(rig, spec, spec_radius, config.elevation))
    return [rig if config.stereo else rig.head for rig in rigs]


def capture_views(config: RenderConfig, splats: Splats, capture: SceneCameras) -> list[Camera | StereoRig]:
    """``config.frames`` of the scene's capture cameras, spread over the capture, at ``config``'s image size (the
    capture's horizontal field of view): stereo rigs or single cameras."""
    cams = [camera_at_size(c.camera, config.width, config.height) for c in capture.evenly(config.frames)]
    if not config.stereo:
        return list(cams)
    ipd = config.ipd if config.ipd is not None else 0.064 * scene_frame(splats)[1]
    return [StereoRig(cam, ipd) for cam in cams]


def _at_radius(rig: StereoRig, spec: PathSpec, radius: float, elevation: float) -> StereoRig:
    """Move an orbit rig to ``radius`` from the centre (and ``elevation`` x radius above it), same direction."""
    c, up, _, _ = spec.basis()
    flat = rig.head.position - c - (rig.head.position - c) @ up * up
    eye = c + radius * flat / flat.norm() + elevation * radius * up
    return StereoRig(rig.head.with_pose(look_at(eye, c, up)), rig.ipd, rig.K_left, rig.K_right)


def load_camera_file(path: Path, stereo_ipd: float | None = None) -> list[Camera | StereoRig]:
    """Read cameras from JSON: ``{"cameras": [{...}, ...]}``.

    Each camera has ``width``, ``height``, either ``K`` (3x3) or ``fov_x_deg``, either ``world_to_camera``
    (4x4, OpenCV) or ``c2w_opengl`` (4x4, OpenGL/Blender axes), and optional ``near``, ``far``.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: camera file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    entries = doc.get("cameras") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected an object with a non-empty list 'cameras'")
    cameras: list[Camera | StereoRig] = []
    for i, entry in enumerate(entries):
        try:
            cam = _camera_from_json(entry)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: cameras[{i}]: {err}") from None
        cameras.append(StereoRig(cam, stereo_ipd) if stereo_ipd is not None else cam)
    return cameras


def _camera_from_json(entry: dict) -> Camera:
    width, height = entry["width"], entry["height"]
    if "K" in entry:
        k = torch.tensor(entry["K"], dtype=torch.float64)
    elif "fov_x_deg" in entry:
        k = intrinsics_from_fov(width, height, float(entry["fov_x_deg"]))
    else:
        raise ValueError("needs 'K' or 'fov_x_deg'")
    near, far = float(entry.get("near", 0.01)), float(entry.get("far", 1e10))
    if "world_to_camera" in entry:
        return Camera(torch.tensor(entry["world_to_camera"], dtype=torch.float64), k, width, height, near, far)
    if "c2w_opengl" in entry:
        return Camera.from_opengl_c2w(torch.tensor(entry["c2w_opengl"], dtype=torch.float64), k, width, height,
                                      near, far)
    raise ValueError("needs 'world_to_camera' or 'c2w_opengl'")


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def _depth_to_uint8(depth: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    """Depth ``[H, W, 1]`` as grey levels: near is bright, far is dark, empty is black."""
    d = depth[..., 0].detach().float().cpu()
    hit = alpha[..., 0].detach().cpu() > 0.5
    if not hit.any():
        return np.zeros(d.shape, dtype=np.uint8)
    lo, hi = torch.quantile(d[hit], 0.01), torch.quantile(d[hit], 0.99)
    scaled = 1 - (d - lo) / (hi - lo).clamp_min(1e-12)
    return (torch.where(hit, scaled.clamp(0.05, 1), torch.zeros_like(d)) * 255).to(torch.uint8).numpy()


def write_png_atomic(path: Path, pixels: np.ndarray) -> None:
    """Write a PNG through a temporary file in the same directory, so no partial file is ever left behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(pixels).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _frame_pixels(images: Sequence[torch.Tensor]) -> np.ndarray:
    """Cameras of one frame side by side (left eye first)."""
    return np.concatenate([_to_uint8(img) if img.dtype != torch.uint8 else img.numpy() for img in images], axis=1)


def run_render(config: RenderConfig, console: Console | None = None) -> RenderRun:
    """Render ``config.scene`` (or the bundled scene) and write one PNG per frame (and per extra output)."""
    console = console or Console(stderr=True, quiet=config.quiet)
    scene_path = resolve_scene_file(config.scene) if config.scene is not None else default_scene_path()
    device = _pick_device(config.device)
    splats = load_scene(scene_path, nonfinite="drop" if config.drop_nonfinite else "error").to(device)
    if config.cameras is not None:
        center, extent = scene_frame(splats)
        ipd = (config.ipd if config.ipd is not None else 0.064 * extent) if config.stereo else None
        views = load_camera_file(config.cameras, ipd)
    else:
        capture = None if config.path == "orbit" else open_scene_cameras(scene_path)
        if capture is None and config.path == "capture":
            looked = ", ".join(str(c) for c in scene_cameras_candidates(scene_path))
            raise ValueError(f"--path capture: {scene_path} has no capture cameras (looked for {looked})")
        views = capture_views(config, splats, capture) if capture is not None else orbit_views(config, splats)
    config.out.mkdir(parents=True, exist_ok=True)
    run = RenderRun(backend=config.backend, device=str(device))
    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress, torch.inference_mode():
        task = progress.add_task("render", total=len(views))
        for index, view in enumerate(views):
            start = time.perf_counter()
            out = render(splats, view, backend=config.backend, sh_degree=config.sh_degree,
                         background=config.background, render_mode=config.mode)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            run.frame_ms.append((time.perf_counter() - start) * 1e3)
            run.files.extend(_write_frame(config.out, index, out))
            progress.advance(task)
    return run


def _write_frame(out_dir: Path, index: int, out) -> list[Path]:
    written = []
    stem = f"frame_{index:04d}"
    if out.image is not None:
        written.append(out_dir / f"{stem}.png")
        write_png_atomic(written[-1], _frame_pixels(list(out.image)))
    if out.depth is not None:
        written.append(out_dir / f"{stem}_depth.png")
        write_png_atomic(written[-1], _frame_pixels([torch.from_numpy(_depth_to_uint8(d, a))
                                                     for d, a in zip(out.depth, out.alpha)]))
    if out.image is None and out.depth is None:
        written.append(out_dir / f"{stem}_alpha.png")
        write_png_atomic(written[-1], _frame_pixels([torch.from_numpy(_to_uint8(a[..., 0])) for a in out.alpha]))
    return written
