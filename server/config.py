"""What a render server runs with: where it listens, what it serves, and the bounds it enforces."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

MAX_IMAGE_SIDE = 4096  # per side, per eye: the most a request may ask for
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what clients may ask for; requests beyond them are refused with a 4xx/503 naming the bound.

    Attributes:
        max_body_bytes: largest HTTP request body.
        max_message_bytes: largest WebSocket message (larger ones close the stream with code 1009).
        max_inflight_requests: HTTP requests served at once (503 beyond).
        max_streams: WebSocket streams open at once (close code 1013 beyond).
        max_queued_renders: renders waiting for the render thread (503 beyond).
        max_scene_files: entries listed by ``GET /scenes``.
        bench_max_megapixels: pixels a ``POST /bench`` may render in all (warm-up, timed and quality frames).
        bench_max_frames: timed frames per case of a ``POST /bench``.
    """

    max_body_bytes: int = 64 * 1024
    max_message_bytes: int = 64 * 1024
    max_inflight_requests: int = 32
    max_streams: int = 4
    max_queued_renders: int = 8
    max_scene_files: int = 1000
    bench_max_megapixels: float = 4096.0
    bench_max_frames: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_message_bytes", "max_inflight_requests", "max_streams",
                     "max_queued_renders", "max_scene_files", "bench_max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ServerConfig:
    """A render server's settings.

    Attributes:
        scenes_dir: the served directory; ``POST /scenes/load`` and ``POST /bench`` only read scenes under it.
        scene: a scene loaded at start (any path the operator gives; it need not lie under ``scenes_dir``).
        bench_scene: instead of ``scene``, a benchmark scene id of BENCHMARK.md (``guitar-g8``, ``guitar-g8-sh3``)
            built at start from ``data_dir`` (``server.bench_scenes``); clients get its centre, the extent of one
            copy and the grid, so that they fly the same ``orbit`` and ``head`` paths as ``gscache bench``.
        data_dir: where ``bench_scene``'s base scene file lies (``guitar.ply``, ...); the default data folder when
            None.
        host, port: where to listen; loopback by default.
        token: the shared secret every request must carry (``Authorization: Bearer``; ``?token=`` on WebSocket).
        insecure_no_token: allow a non-loopback ``host`` without a token (logged loudly).
        backend: renderer backend name (``auto``, ``torch``, ``native``, ...).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``.
        gpu_jpeg: encode JPEG on the GPU (torchvision) when frames are on CUDA and torchvision imports.
        stream_pipeline_depth: frames of one stream in flight at once: 1 renders, encodes and sends each frame
            before the next render starts; 2 renders the next frame while the last one is encoded and sent.
        shutdown_grace_s: how long shutdown waits for in-flight requests and open streams.
        gpu_budget_mib: the GPU memory budget chunk-file scenes (``.gschunks``) render under
            (:class:`renderer.streaming.StreamingRenderer`); chunk files are refused without one.
        lod_threshold_px: their level-of-detail threshold in pixels (None: level 0 only).
        cache: render through the frame cache (``server.sources.CachedFrameSource``, one cache per stream session)
            where the backend has stages; False (the default) renders every frame from scratch, exactly as
            ``renderer.render``. Off by default: on the GPU the cache is not yet faster than uncached ``native``
            (issue 4's measurements in ``benchmarks/results``).
        gpus: spread frames over several devices with the multi-GPU scheduler (``server.sources``): a count
            (``2``) or a list (``0,1``, ``cuda:0,cuda:1``, ``cpu,cpu``); None: the single render thread.
        limits: request bounds.
    """

    scenes_dir: Path
    scene: Path | None = None
    bench_scene: str | None = None
    data_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    insecure_no_token: bool = False
    backend: str = "auto"
    device: str = "auto"
    gpu_jpeg: bool = True
    stream_pipeline_depth: int = 2
    shutdown_grace_s: float = 10.0
    gpu_budget_mib: float | None = None
    lod_threshold_px: float | None = None
    cache: bool = False
    gpus: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: expected 0..65535, got {self.port}")
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ValueError(f"token: expected at least {MIN_TOKEN_CHARS} characters, got {len(self.token)}")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s: expected >= 0, got {self.shutdown_grace_s}")
        if not 1 <= self.stream_pipeline_depth <= 4:
            raise ValueError(f"stream_pipeline_depth: expected 1..4, got {self.stream_pipeline_depth}")
        if self.gpu_budget_mib is not None and not self.gpu_budget_mib > 0:
            raise ValueError(f"gpu_budget_mib: expected > 0, got {self.gpu_budget_mib}")
        if self.scene is not None and self.bench_scene is not None:
            raise ValueError("give a scene file or a bench scene id (bench_scene), not both")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def check_bind_policy(host: str, token: str | None, insecure_no_token: bool) -> bool:
    """Raise ``ValueError`` when ``host`` is not loopback and neither a token nor the opt-out was given.

    Returns:
        True when the server will listen beyond loopback without a token (the caller must warn loudly).
    """
    if is_loopback(host) or token:
        return False
    if not insecure_no_token:
        raise ValueError(
            f"host: {host!r} is not a loopback address; anyone who can reach it could use this server. "
            "Pass --token (or set GSCACHE_SERVER_TOKEN), or --insecure-no-token to serve without one"
        )
    return True
