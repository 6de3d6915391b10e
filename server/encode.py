"""Frame encoders: PNG (Pillow), JPEG (torchvision on CUDA when it imports, else simplejpeg) and raw RGB bytes."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger("gscache.server")

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "raw": "application/octet-stream"}
FORMAT_CODES = {"raw": 0, "jpeg": 1, "png": 2}  # the stream header's format byte
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 is several times faster than the default 6


@dataclass(frozen=True)
class EncodedFrame:
    """Encoded image bytes.

    Attributes:
        data: the file bytes (PNG, JPEG) or, for ``raw``, ``height * width * 3`` uint8 RGB bytes, row-major.
        format: ``png``, ``jpeg`` or ``raw``.
        media_type: the HTTP content type.
        encode_ms: time to copy the frame to the host (when it was on a GPU) and encode it.
        encoder: what encoded it (``pillow``, ``simplejpeg``, ``torchvision-cuda``, ``raw``).
    """

    data: bytes
    format: str
    media_type: str
    encode_ms: float
    encoder: str


class FrameEncoder:
    """Encodes uint8 frames, ``[H, W, 3]`` or planar ``[3, H, W]``; thread-safe. torchvision is imported on first
    CUDA JPEG, if at all.

    GPU JPEG (torchvision's nvJPEG) reads its input on a stream of its own without waiting for the caller's: the
    frame must be complete when :meth:`encode` is called (the render thread synchronises its stream before it hands
    a frame over), and planar, so that no layout copy has to run first. :meth:`wants_planar` says which layout a
    frame should be rendered into.
    """

    def __init__(self, gpu_jpeg: bool = True) -> None:
        self._gpu_jpeg_wanted = gpu_jpeg
        self._torchvision_io: Any = None  # None: not tried yet; False: unavailable

    def wants_planar(self, fmt: str, device: torch.device) -> bool:
        """Whether a ``fmt`` frame on ``device`` is best handed to :meth:`encode` planar (``[3, H, W]``)."""
        return fmt == "jpeg" and torch.device(device).type == "cuda" and self._gpu_jpeg() is not None

    def encode(self, image: torch.Tensor, fmt: str, quality: int = 90, planar: bool = False) -> EncodedFrame:
        """Encode ``image`` (on any device; ``[H, W, 3]``, or ``[3, H, W]`` when ``planar``) as ``fmt``.

        JPEG ``quality`` is 1..100.
        """
        channels = image.shape[0] if planar else image.shape[-1]
        if image.dtype != torch.uint8 or image.ndim != 3 or channels != 3:
            layout = "[3, H, W]" if planar else "[H, W, 3]"
            raise ValueError(f"image: expected uint8 {layout}, got {image.dtype} {list(image.shape)}")
        start = time.perf_counter()
        data = self._encode_jpeg_cuda(image, quality, planar) if fmt == "jpeg" and image.is_cuda else None
        if data is not None:
            encoder = "torchvision-cuda"
        else:
            hwc = image.permute(1, 2, 0) if planar else image
            array = np.ascontiguousarray(hwc.cpu().numpy())
            data, encoder = _encode_host(array, fmt, quality)
        return EncodedFrame(data, fmt, MEDIA_TYPES[fmt], (time.perf_counter() - start) * 1e3, encoder)

    def _gpu_jpeg(self) -> Any:
        if self._torchvision_io is None:
            self._torchvision_io = _import_torchvision_io() if self._gpu_jpeg_wanted else False
        return self._torchvision_io or None

    def _encode_jpeg_cuda(self, image: torch.Tensor, quality: int, planar: bool) -> bytes | None:
        """JPEG bytes encoded on the GPU, or None where that is unavailable (then it is not tried again)."""
        tvio = self._gpu_jpeg()
        if tvio is None:
            return None
        chw = image if planar else image.permute(2, 0, 1)
        if not chw.is_contiguous():
            chw = chw.contiguous()
            # nvJPEG does not wait for this thread's stream: the copy must be done before it reads
            torch.cuda.current_stream(image.device).synchronize()
        try:
            encoded = tvio.encode_jpeg(chw, quality=quality)
        except (RuntimeError, TypeError, ValueError) as err:  # an old torchvision or no nvJPEG: CPU from now on
            log.warning("GPU JPEG failed (%s); using simplejpeg from now on", err)
            self._torchvision_io = False
            return None
        # torchvision copies the bitstream out on the legacy default stream: wait for it before reading the bytes
        torch.cuda.default_stream(image.device).synchronize()
        data = encoded.cpu().numpy().tobytes()
        if not (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")):  # never send a broken frame
            log.warning("GPU JPEG returned a malformed bitstream (%d bytes); encoding this frame on the CPU",
                        len(data))
            return None
        return data


def _encode_host(array: np.ndarray, fmt: str, quality: int) -> tuple[bytes, str]:
    if fmt == "raw":
        return array.tobytes(), "raw"
    if fmt == "jpeg":
        import simplejpeg

        return simplejpeg.encode_jpeg(array, quality=quality, colorspace="RGB"), "simplejpeg"
    if fmt == "png":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(array, "RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue(), "pillow"
    raise ValueError(f"format: expected png, jpeg or raw, got {fmt!r}")


def _import_torchvision_io() -> Any:
    """``torchvision.io`` when it imports beside this torch build and can encode on CUDA, else False."""
    try:
        import torchvision.io as tvio
    except Exception as err:  # noqa: BLE001 - a mismatched torchvision fails in many ways; all mean "not here"
        log.info("GPU JPEG unavailable (torchvision does not import: %s); using simplejpeg", err)
        return False
    if not hasattr(tvio, "encode_jpeg"):
        return False
    return tvio


def to_uint8(image: torch.Tensor, planar: bool = False) -> torch.Tensor:
    """``[C, H, W, 3]`` float in [0, 1] -> ``[H, C * W, 3]`` uint8 (eyes side by side), as the CLI writes PNGs.

    With ``planar``: the same image as ``[3, H, C * W]`` (what GPU JPEG encoders read), in one copy as well.
    """
    pixels = image.detach().clamp(0, 1).mul_(255).add_(0.5).to(torch.uint8)  # [C, H, W, 3]
    c, h, w, _ = pixels.shape
    if planar:
        return pixels.permute(3, 1, 0, 2).reshape(3, h, c * w).contiguous()  # mono: reshape alone is a view
    return pixels.permute(1, 0, 2, 3).reshape(h, c * w, 3)
