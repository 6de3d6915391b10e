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
    """Encodes ``[H, W, 3]`` uint8 frames; thread-safe. torchvision is imported on first CUDA JPEG, if at all."""

    def __init__(self, gpu_jpeg: bool = True) -> None:
        self._gpu_jpeg_wanted = gpu_jpeg
        self._torchvision_io: Any = None  # None: not tried yet; False: unavailable

    def encode(self, image: torch.Tensor, fmt: str, quality: int = 90) -> EncodedFrame:  # image: [H, W, 3] uint8
        """Encode ``image`` (on any device) as ``fmt``; JPEG ``quality`` is 1..100."""
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        start = time.perf_counter()
        data = self._encode_jpeg_cuda(image, quality) if fmt == "jpeg" and image.is_cuda else None
        if data is not None:
            encoder = "torchvision-cuda"
        else:
            array = np.ascontiguousarray(image.cpu().numpy())
            data, encoder = _encode_host(array, fmt, quality)
        return EncodedFrame(data, fmt, MEDIA_TYPES[fmt], (time.perf_counter() - start) * 1e3, encoder)

    def _gpu_jpeg(self) -> Any:
        if self._torchvision_io is None:
            self._torchvision_io = _import_torchvision_io() if self._gpu_jpeg_wanted else False
        return self._torchvision_io or None

    def _encode_jpeg_cuda(self, image: torch.Tensor, quality: int) -> bytes | None:
        """JPEG bytes encoded on the GPU, or None where that is unavailable (then it is not tried again)."""
        tvio = self._gpu_jpeg()
        if tvio is None:
            return None
        try:
            encoded = tvio.encode_jpeg(image.permute(2, 0, 1).contiguous(), quality=quality)
        except (RuntimeError, TypeError, ValueError) as err:  # an old torchvision or no nvJPEG: CPU from now on
            log.warning("GPU JPEG failed (%s); using simplejpeg from now on", err)
            self._torchvision_io = False
            return None
        return encoded.cpu().numpy().tobytes()


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


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """``[C, H, W, 3]`` float in [0, 1] -> ``[H, C * W, 3]`` uint8 (eyes side by side), as the CLI writes PNGs."""
    pixels = (image.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return pixels.permute(1, 0, 2, 3).reshape(image.shape[1], image.shape[0] * image.shape[2], 3)
