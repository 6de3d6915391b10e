"""``gscache bench --server URL``: motion-to-photon latency of a render server, measured from a client.

Latency of a pose = time from sending it on ``/stream`` to receiving the frame whose header names its id (client
clock only; the two machines' clocks are never compared). Modes:
- closed loop (``rate_hz = 0``): each pose is sent when the previous frame arrived: latency without queueing;
- paced (``rate_hz > 0``): poses are sent at that rate, as a headset would; stale poses are dropped by the server,
  so only answered poses have a latency, and the drop count is reported.
Poses follow the ``orbit`` or ``head`` path of BENCHMARK.md around the server's loaded scene.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from renderer import PathSpec, StereoRig, head_path, orbit_path

from .stream import FrameHeader


@dataclass(frozen=True)
class ClientBenchConfig:
    """What ``bench --server`` measures.

    Attributes:
        server_url: ``http://host:port`` of a running ``gscache serve``.
        token: the server's token (``GSCACHE_SERVER_TOKEN`` is read by the CLI when this is None).
        poses: measured poses; warmup: poses sent and answered first, not measured.
        rate_hz: 0 for closed loop, else the rate poses are sent at.
        path: ``orbit`` or ``head``.
        width, height: per eye; stereo: both eyes side by side; fov_x_deg: horizontal field of view.
        format, quality: frame encoding.
        timeout_s: how long to wait for any one frame.
        out: write the result JSON here as well.
    """

    server_url: str
    token: str | None = None
    poses: int = 120
    warmup: int = 8
    rate_hz: float = 0.0
    path: Literal["orbit", "head"] = "head"
    width: int = 2064
    height: int = 2208
    stereo: bool = True
    fov_x_deg: float = 90.0
    format: Literal["jpeg", "png", "raw"] = "jpeg"
    quality: int = 90
    timeout_s: float = 30.0
    out: Path | None = None

    def __post_init__(self) -> None:
        if not self.server_url.startswith(("http://", "https://")):
            raise ValueError(f"server_url: expected http://host:port or https://..., got {self.server_url!r}")
        if self.poses < 1 or self.warmup < 0 or self.rate_hz < 0:
            raise ValueError(f"poses >= 1, warmup >= 0 and rate_hz >= 0 expected, got {self.poses}, {self.warmup}, "
                             f"{self.rate_hz}")


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds over the answered poses."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @staticmethod
    def of(values: list[float]) -> LatencyStats:
        if not values:
            raise ValueError("no pose was answered: nothing to report")
        a = np.asarray(values)
        return LatencyStats(*(round(float(v), 3) for v in (np.median(a), np.percentile(a, 90),
                                                           np.percentile(a, 99), a.mean(), a.min(), a.max())))


@dataclass(frozen=True)
class ClientBenchResult:
    """A motion-to-photon run (``to_json`` gives the file shape)."""

    server: str
    scene: str
    device: str
    backend: str
    mode: str
    rate_hz: float
    path: str
    width: int
    height: int
    eyes: int
    format: str
    poses_sent: int
    frames_received: int
    poses_dropped: int
    motion_to_photon: LatencyStats
    server_render_ms_median: float
    server_encode_ms_median: float
    frames_per_s: float
    date: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class _Answer:
    latency_ms: float
    header: FrameHeader


def bench_client_main(config: ClientBenchConfig, console=None) -> ClientBenchResult:  # console: rich Console
    """Run the measurement, print a summary (stderr), write ``config.out`` if set, return the result."""
    from rich.console import Console

    console = console or Console(stderr=True)
    result = asyncio.run(measure(config))
    lat = result.motion_to_photon
    console.print(f"{result.server} ({result.device}, {result.backend}, scene {result.scene}): {result.mode}, "
                  f"{result.frames_received}/{result.poses_sent} poses answered; motion-to-photon median "
                  f"{lat.median_ms:.2f} ms, p90 {lat.p90_ms:.2f}, p99 {lat.p99_ms:.2f}")
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"wrote {config.out}")
    return result


async def measure(config: ClientBenchConfig) -> ClientBenchResult:
    """Connect, send ``warmup + poses`` poses along the path, and time their frames."""
    import httpx
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    async with httpx.AsyncClient(base_url=config.server_url, headers=headers, timeout=config.timeout_s) as http:
        health = (await _get_json(http, "/health"))
        loaded = (await _get_json(http, "/scenes"))["loaded"]
    if loaded is None:
        raise ValueError(f"{config.server_url}: no scene is loaded; start the server with a scene or POST /scenes/load")
    rigs = _rigs(config, loaded["center"], loaded["extent"], config.warmup + config.poses)
    ws_url = "ws" + config.server_url.removeprefix("http").rstrip("/") + "/stream"
    async with connect(ws_url, additional_headers=headers, max_size=2**28, open_timeout=config.timeout_s) as ws:
        await ws.send(json.dumps(_view_message(config, loaded["extent"])))
        start = time.perf_counter()
        if config.rate_hz > 0:
            answers = await _paced(ws, rigs, config)
        else:
            answers = await _closed_loop(ws, rigs, config)
        elapsed = time.perf_counter() - start
    measured = [a for pose_id, a in answers.items() if pose_id >= config.warmup]
    return ClientBenchResult(
        server=config.server_url, scene=loaded["name"], device=health["device"], backend=health["backend"],
        mode="paced" if config.rate_hz > 0 else "closed-loop", rate_hz=config.rate_hz, path=config.path,
        width=config.width, height=config.height, eyes=2 if config.stereo else 1, format=config.format,
        poses_sent=config.poses, frames_received=len(measured), poses_dropped=config.poses - len(measured),
        motion_to_photon=LatencyStats.of([a.latency_ms for a in measured]),
        server_render_ms_median=round(float(np.median([a.header.render_ms for a in measured])), 3),
        server_encode_ms_median=round(float(np.median([a.header.encode_ms for a in measured])), 3),
        frames_per_s=round(len(answers) / elapsed, 3), date=datetime.date.today().isoformat(),
    )


async def _get_json(http, route: str) -> dict:
    response = await http.get(route)
    if response.status_code != 200:
        raise ValueError(f"{route}: HTTP {response.status_code}: {response.text[:200]}")
    return response.json()


def _rigs(config: ClientBenchConfig, center: list[float], extent: float, count: int) -> list[StereoRig]:
    spec = PathSpec(center=center, extent=extent, width=config.width, height=config.height,
                    fov_x_deg=config.fov_x_deg)
    poses = list(orbit_path(spec) if config.path == "orbit" else head_path(spec))
    return [poses[i % len(poses)] for i in range(count)]


def _view_message(config: ClientBenchConfig, extent: float) -> dict[str, object]:
    return {"type": "config", "width": config.width, "height": config.height, "fov_x_deg": config.fov_x_deg,
            "stereo": config.stereo, "ipd": 0.064 * extent, "format": config.format, "quality": config.quality}


def _pose_message(pose_id: int, rig: StereoRig) -> str:
    return json.dumps({"type": "pose", "id": pose_id, "world_to_camera": rig.head.world_to_camera.tolist()})


async def _next_frame(ws, timeout_s: float) -> FrameHeader:
    """The next binary frame's header; a text error from the server raises ``ValueError``."""
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout_s)
        if isinstance(message, bytes):
            return FrameHeader.unpack(message)
        error = json.loads(message)
        raise ValueError(f"server refused pose {error.get('pose_id')}: {error.get('detail')}")


async def _closed_loop(ws, rigs: list[StereoRig], config: ClientBenchConfig) -> dict[int, _Answer]:
    answers: dict[int, _Answer] = {}
    for pose_id, rig in enumerate(rigs):
        sent = time.perf_counter()
        await ws.send(_pose_message(pose_id, rig))
        header = await _next_frame(ws, config.timeout_s)
        while header.pose_id != pose_id:  # cannot happen in closed loop, but never mis-attribute a frame
            header = await _next_frame(ws, config.timeout_s)
        answers[pose_id] = _Answer((time.perf_counter() - sent) * 1e3, header)
    return answers


async def _paced(ws, rigs: list[StereoRig], config: ClientBenchConfig) -> dict[int, _Answer]:
    sent_at: dict[int, float] = {}
    answers: dict[int, _Answer] = {}
    period = 1.0 / config.rate_hz
    last = len(rigs) - 1

    async def send_all() -> None:
        start = time.perf_counter()
        for pose_id, rig in enumerate(rigs):
            await asyncio.sleep(max(0.0, start + pose_id * period - time.perf_counter()))
            sent_at[pose_id] = time.perf_counter()
            await ws.send(_pose_message(pose_id, rig))

    sender = asyncio.create_task(send_all())
    try:
        while last not in answers:
            header = await _next_frame(ws, config.timeout_s)
            answers[header.pose_id] = _Answer((time.perf_counter() - sent_at[header.pose_id]) * 1e3, header)
    finally:
        sender.cancel()
    return answers
