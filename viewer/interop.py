"""The display path of the viewer's CUDA frame sources: eye images -> display-ready RGBA8 on the GPU, and CUDA-GL
interop to put it into a GL texture without leaving the GPU.

A CUDA frame source renders both eyes in one call and turns the float ``[C, H, W, 3]`` image (or alpha, or depth)
into the image the compose pass would show (``COMPOSE_FRAGMENT`` in ``viewer/_glsl.py``: shading by mode, the stereo
layout, 8 bits), in one kernel (``cuda/csrc/gl_interop.cu``) that writes straight into the GL texture when the GL
context runs on the CUDA GPU (:class:`GLImage`), else into a tensor that goes through pinned host memory
(``viewer.sources.RendererSource``). :func:`display_rgba8` is the same computation in torch: the reference of the
kernel, and what runs where the native extension does not.

Set ``GSCACHE_VIEWER_INTEROP=0`` to keep the host path on a CUDA machine (A/B measurements).
"""

from __future__ import annotations

import warnings

import moderngl
import numpy as np
import torch

from renderer.switches import turned_off

LAYOUT_IDS = {"mono": 0, "side-by-side": 1, "anaglyph": 2}
MODE_IDS = {"rgb": 0, "depth": 1, "alpha": 2}
INTEROP_ENV = "GSCACHE_VIEWER_INTEROP"
_CUDA_ERROR_NO_DEVICE = 100  # cudaErrorNoDevice from cudaGLGetDevices: the GL context's GPU is not a CUDA device


def display_size(layout: str, eye_width: int, eye_height: int) -> tuple[int, int]:
    """Width and height of the display image of ``layout`` for eyes of that size (side by side: two eyes wide)."""
    return (2 * eye_width if layout == "side-by-side" else eye_width), eye_height


def depth_ramp(ranges: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Per eye ``(near, max(far - near, 1e-12))`` of the depth grey ramp, rounded as float32 computes them (so that
    the kernel and :func:`display_rgba8` divide by the same number)."""
    lo = [float(np.float32(near)) for near, _ in ranges]
    span = [float(max(np.float32(far) - np.float32(near), np.float32(1e-12))) for near, far in ranges]
    return lo, span


def display_rgba8(image: torch.Tensor | None, alpha: torch.Tensor | None, depth: torch.Tensor | None, mode: str,
                  layout: str, depth_lo: list[float] | None = None,
                  depth_span: list[float] | None = None) -> torch.Tensor:
    """The display image ``[H, W_out, 4]`` uint8 (row 0 at the top, alpha 255) of the eye images, as the compose
    pass shades them: ``rgb`` clamps the colour (``image`` ``[C, H, W, 3]``), ``alpha`` shows ``alpha``
    ``[C, H, W, 1]`` as grey, ``depth`` a grey ramp ``1 - (depth - lo) / span`` clamped to [0.05, 1] where
    alpha > 0.5, else black. Layouts: ``mono`` (eye 0), ``side-by-side`` (eye 0 | eye 1), ``anaglyph`` (red from
    eye 0, green and blue from eye 1). Runs on the inputs' device."""
    if mode not in MODE_IDS or layout not in LAYOUT_IDS:
        raise ValueError(f"display: unknown mode {mode!r} or layout {layout!r}")
    depth_lo = depth_lo or [0.0, 0.0]
    depth_span = depth_span or [1.0, 1.0]

    def shade(eye: int) -> torch.Tensor:  # [H, W, 3] float in [0, 1]
        if mode == "rgb":
            return image[eye].float().clamp(0.0, 1.0)
        a = alpha[eye].float()
        if mode == "alpha":
            return a.clamp(0.0, 1.0).expand(-1, -1, 3)
        g = (1.0 - (depth[eye].float() - depth_lo[eye]) / depth_span[eye]).clamp(0.05, 1.0)
        return torch.where(a <= 0.5, torch.zeros_like(g), g).expand(-1, -1, 3)

    if layout == "mono":
        rgb = shade(0)
    elif layout == "side-by-side":
        rgb = torch.cat([shade(0), shade(1)], dim=1)
    else:
        rgb = torch.cat([shade(0)[..., :1], shade(1)[..., 1:]], dim=-1)
    rgb8 = (rgb * 255.0).round().to(torch.uint8)
    return torch.cat([rgb8, torch.full_like(rgb8[..., :1], 255)], dim=-1).contiguous()


def _ops(device: torch.device):
    from renderer.native import load_native

    return load_native(device)


def interop_unavailable(device: torch.device) -> str | None:
    """Why CUDA-GL interop cannot be used from the current GL context for frames on ``device``; None when it can
    be tried (registering the first texture is the final test). Needs the GL context current on this thread."""
    if turned_off(INTEROP_ENV):
        return f"turned off ({INTEROP_ENV}=0)"
    if device.type != "cuda":
        return "the frames are rendered on the CPU"
    try:
        ops = _ops(device)
    except RuntimeError as err:  # BackendUnavailableError: no compiler, failed build
        return f"the native extension is unavailable ({err})"
    code, devices = ops.gl_cuda_devices()
    index = device.index if device.index is not None else torch.cuda.current_device()
    if code == _CUDA_ERROR_NO_DEVICE:
        return "the GL context does not run on a CUDA GPU"
    if code == 0 and devices and index not in devices:
        return f"the GL context runs on CUDA device(s) {list(devices)}, the frames on cuda:{index}"
    return None  # (no answer, or another error: the query may not know this context, e.g. EGL; try registering)


class GLImage:
    """An RGBA8 GL texture registered with CUDA, written by the display kernel without leaving the GPU.

    Register once per texture (a new texture, e.g. after a resize, needs a new ``GLImage``) and :meth:`release`
    before the texture is deleted. The GL context must be current on the calling thread for every call.

    Raises:
        RuntimeError: registration failed (the message has CUDA's error), e.g. the context is not on this GPU.
    """

    def __init__(self, texture: moderngl.Texture, device: torch.device) -> None:
        if texture.dtype != "f1" or texture.components != 4:
            raise ValueError(f"GLImage: expected an RGBA8 texture, got {texture.components} x {texture.dtype}")
        self.device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        self.texture = texture
        self.size = texture.size
        self._ops = _ops(self.device)
        self._handle: int | None = int(self._ops.gl_register_image(texture.glo, texture.width, texture.height,
                                                                   self.device.index))

    def write(self, image: torch.Tensor | None, alpha: torch.Tensor | None, depth: torch.Tensor | None, mode: str,
              layout: str, depth_lo: list[float] | None = None, depth_span: list[float] | None = None) -> None:
        """Write :func:`display_rgba8` of these inputs into the texture, ordered on the current CUDA stream; GL
        work issued afterwards sees it (no host synchronisation)."""
        if self._handle is None:
            raise RuntimeError("GLImage: already released")
        self._ops.gl_write_display(self._handle, image, alpha, depth, MODE_IDS[mode], LAYOUT_IDS[layout],
                                   depth_lo or [0.0, 0.0], depth_span or [1.0, 1.0])

    def release(self) -> None:
        """Unregister from CUDA (waits for the last write); never raises (a failure is a warning)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            self._ops.gl_unregister_image(handle)
        except RuntimeError as err:
            warnings.warn(f"GLImage: unregistering texture {self.texture.glo} failed: {err}", stacklevel=2)
