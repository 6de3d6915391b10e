"""``gscache view``: the desktop viewer, or (with ``--export-path``) a headless video export of a camera path.

Only the standard library and tyro are imported here; imgui_bundle, moderngl and torch load when the command runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from rich.console import Console


@dataclass
class View:
    """Open the desktop viewer (the bundled scene when no SCENE, or a render server's stream with --remote), or
    export a camera path to video headlessly."""

    scene: tyro.conf.Positional[Path | None] = None
    """Scene file (.ply, .compressed.ply, .splat, .spz, or a .gschunks chunk file with --gpu-budget-mib) or a
    training run's folder (its scene, starting from its capture cameras); the bundled scene when omitted."""
    backend: Literal["auto", "gl", "torch", "native"] = "auto"
    """Frame source: gl (OpenGL shaders), torch (CPU/CUDA reference), native (CUDA); auto: native on CUDA, else gl."""
    width: int = 1280
    """Window width (or video width with --export-path; both eyes together for side-by-side)."""
    height: int = 800
    """Window height (or video height with --export-path)."""
    frames: int | None = None
    """Exit after this many frames (for tests and scripted screenshots)."""
    screenshot: Path | None = None
    """Save the 3D view as PNG before exiting (exits after --frames, 3 when not given)."""
    export_path: Path | None = None
    """Camera-path JSON to render into a video without a window (needs --out)."""
    out: Path | None = None
    """The .mp4 written by --export-path."""
    stereo: Literal["mono", "side-by-side", "anaglyph"] = "mono"
    ipd: float | None = None
    """Inter-pupillary distance in scene units; 0.064 x the scene's extent when omitted."""
    scale: float | None = None
    """Resolution scale of the rendered image (1 for gl; 0.25 for torch on CPU when omitted)."""
    sh_degree: int | None = None
    mode: Literal["rgb", "depth", "alpha"] = "rgb"
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gl: Literal["auto", "egl", "glx"] = "auto"
    """OpenGL context for --export-path: egl (no display needed), glx (needs DISPLAY) or auto."""
    drop_nonfinite: bool = False
    """Drop Gaussians with NaN/Inf values instead of refusing the file."""
    gpu_budget_mib: float | None = None
    """GPU memory budget for chunk files (.gschunks, `gscache convert --chunks`; opened here, by Open... or by
    drop), rendered by the torch/native backends in depth slabs under it."""
    remote: str | None = None
    """Show frames streamed from a render server (`gscache serve`) at this URL, e.g. ws://127.0.0.1:8765."""
    token: str | None = None
    """The server's token for --remote ($GSCACHE_SERVER_TOKEN when omitted, which keeps it out of `ps`)."""
    remote_format: Literal["jpeg", "png", "raw"] = "jpeg"
    """Frame encoding asked of the server with --remote (png and raw are lossless)."""
    remote_quality: int = 90
    """JPEG quality (1..100) with --remote."""

    def run(self, console: Console) -> None:
        self._check()
        from .session import export_video_headless, run_window

        if self.export_path is not None:
            export_video_headless(self, console)
        else:
            run_window(self, console)

    def _check(self) -> None:
        if (self.export_path is None) != (self.out is None):
            raise ValueError("--export-path and --out go together (a camera path JSON and the .mp4 to write)")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"--frames: expected >= 1, got {self.frames}")
        if not (1 <= self.width <= 16384 and 1 <= self.height <= 16384):
            raise ValueError(f"--width/--height: expected 1..16384, got {self.width}x{self.height}")
        if self.scale is not None and not 0.05 <= self.scale <= 1.0:
            raise ValueError(f"--scale: expected 0.05..1, got {self.scale}")
        if self.gpu_budget_mib is not None and not self.gpu_budget_mib > 0:
            raise ValueError(f"--gpu-budget-mib: expected > 0, got {self.gpu_budget_mib}")
        if self.sh_degree is not None and not 0 <= self.sh_degree <= 3:
            raise ValueError(f"--sh-degree: expected 0..3, got {self.sh_degree}")
        if self.remote is not None:
            if self.scene is not None:
                raise ValueError("SCENE and --remote exclude each other: the viewer shows the server's loaded scene")
            if self.export_path is not None:
                raise ValueError("--export-path renders locally; it does not work with --remote")
            self.remote_spec()  # raises ValueError naming a bad URL, format or quality
        elif self.token is not None:
            raise ValueError("--token is the render server's token: it goes with --remote")

    def remote_spec(self):
        """The ``RemoteSpec`` of ``--remote`` (None without it)."""
        if self.remote is None:
            return None
        import os

        from .remote import RemoteSpec

        token = self.token if self.token is not None else os.environ.get("GSCACHE_SERVER_TOKEN") or None
        return RemoteSpec(self.remote, token, self.remote_format, self.remote_quality)
