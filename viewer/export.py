"""Screenshots (PNG) and video export of a camera path (mp4 through imageio-ffmpeg), step by step.

:class:`VideoExport` renders and writes one frame per :meth:`VideoExport.step`, so the window can advance it once
per UI frame (with a progress bar) and the command line can loop over it (with a rich progress bar). The video is
written to a temporary file next to the destination and renamed only when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .camera_path import CameraPath
from .pipeline import FramePipeline, FrameRequest, ViewSpec


def save_png(path: str | os.PathLike[str], pixels: np.ndarray) -> Path:
    """Write ``[H, W, 3]`` uint8 pixels as PNG through a temporary file; returns the path."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"{path}: directory '{path.parent}' does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(pixels).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class ExportSpec:
    """A video export.

    Attributes:
        out: the ``.mp4`` file.
        width, height: video size (even numbers; both eyes together for side by side).
        template: the request every frame copies (settings, stereo layout, IPD, scale); its view is replaced.
    """

    out: Path
    width: int
    height: int
    template: FrameRequest


class VideoExport:
    """Renders a :class:`CameraPath` into an mp4, one frame per :meth:`step`.

    Raises ``ValueError`` for an empty path, odd sizes or a destination that cannot be written.
    """

    def __init__(self, pipeline: FramePipeline, path: CameraPath, spec: ExportSpec) -> None:
        if not path.keyframes:
            raise ValueError("video export: the camera path has no keyframes")
        if spec.width % 2 or spec.height % 2 or spec.width < 2 or spec.height < 2:
            raise ValueError(f"video export: width and height must be even (H.264), got {spec.width}x{spec.height}")
        out = Path(spec.out)
        if not out.parent.is_dir():
            raise ValueError(f"{out}: directory '{out.parent}' does not exist")
        import imageio.v2 as imageio

        self.pipeline, self.path, self.spec = pipeline, path, spec
        self.views = path.frames()
        self.index = 0
        self._tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.mp4")
        self._writer = imageio.get_writer(self._tmp, fps=path.fps, codec="libx264", quality=8,
                                          macro_block_size=1, pixelformat="yuv420p", ffmpeg_log_level="error")

    @property
    def total(self) -> int:
        return len(self.views)

    @property
    def done(self) -> bool:
        return self.index >= self.total

    @property
    def progress(self) -> float:
        return self.index / max(1, self.total)

    def step(self) -> bool:
        """Render and write the next frame; finish the file after the last. Returns True when done."""
        if self.done:
            return True
        key = self.views[self.index]
        base = self.spec.template
        view = ViewSpec(key.world_to_camera, key.fov_x_deg, base.view.near, base.view.far)
        request = replace(base, view=view, width=self.spec.width, height=self.spec.height)
        self.pipeline.render(request)
        self._writer.append_data(self.pipeline.read_output())
        self.index += 1
        if self.done:
            self._writer.close()
            os.replace(self._tmp, self.spec.out)
        return self.done

    def cancel(self) -> None:
        """Stop and remove the partial file."""
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)
            self.index = self.total
