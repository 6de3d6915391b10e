"""``gscache bench --server URL``: end-to-end frame rate and motion-to-photon latency of a render server, measured
from one or more clients.

Each client opens ``/stream``, sends the view (size, stereo, format), then poses along the ``orbit`` or ``head`` path of
BENCHMARK.md around the server's loaded scene, and times the frames that come back (client clock only; the two
machines' clocks are never compared):
- warm-up: ``warmup`` poses in closed loop (each sent when the last frame arrived), not measured;
- measured: ``poses`` poses, paced at ``rate_hz`` (as a headset sends them; the server renders only the newest pose,
  so stale ones are dropped and counted) or, with ``rate_hz = 0``, in closed loop (latency without queueing).
Several clients (``clients``) warm up, then start their measured poses together (staggered by a fraction of a
period) and each from its own place on the path.

Figures:
- motion-to-photon of a pose = time from sending it to receiving the frame whose header names its id;
- frames/s of a client = frames received / seconds from its first measured pose sent to its last frame received;
  all clients together: every client's frames / seconds from the first measured pose to the last frame;
- errors by kind: ``server-error-<status>`` (a text error from the server), ``bad-frame`` (header, size or JPEG
  markers wrong), ``wrong-pose`` (an unknown pose id, or one older than a pose already shown), ``timeout`` (no
  message for ``timeout_s``), ``closed-<code>`` (the server closed the stream), ``connect-<error>``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from renderer import PathSpec, head_path, orbit_path

from .stream import HEADER, FrameHeader


@dataclass(frozen=True)
class ClientBenchConfig:
    """What ``bench --server`` measures.

    Attributes:
        server_url: ``http://host:port`` of a running ``gscache serve``.
        token: the server's token (``GSCACHE_SERVER_TOKEN`` is read by the CLI when this is None).
        poses: measured poses per client; warmup: poses sent in closed loop first, not measured.
        rate_hz: 0 for closed loop, else the rate each client sends its measured poses at.
        path: ``orbit`` or ``head``.
        width, height: per eye; stereo: both eyes side by side; fov_x_deg: horizontal field of view.
        format, quality: frame encoding.
        clients: concurrent clients (streams), each from its own place on the path.
        timeout_s: how long to wait for any one message.
        out: write the result JSON here as well (:func:`bench_client_main`).
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
    clients: int = 1
    timeout_s: float = 30.0
    out: Path | None = None

    def __post_init__(self) -> None:
        if not self.server_url.startswith(("http://", "https://")):
            raise ValueError(f"server_url: expected http://host:port or https://..., got {self.server_url!r}")
        if self.poses < 1 or self.warmup < 0 or self.rate_hz < 0:
            raise ValueError(f"poses >= 1, warmup >= 0 and rate_hz >= 0 expected, got {self.poses}, {self.warmup}, "
                             f"{self.rate_hz}")
        if not 1 <= self.clients <= 256 or not self.timeout_s > 0:
            raise ValueError(f"clients: expected 1..256 and timeout_s > 0, got {self.clients}, {self.timeout_s}")

    @property
    def mode(self) -> str:
        return "paced" if self.rate_hz > 0 else "closed-loop"


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
    """What one client measured (``to_json`` gives the file shape of ``bench --server --out``).

    ``motion_to_photon`` and the server medians are None when no measured pose was answered (see ``errors``).
    """

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
    motion_to_photon: LatencyStats | None
    server_render_ms_median: float | None
    server_encode_ms_median: float | None
    frames_per_s: float
    date: str
    client: int = 0
    wall_s: float = 0.0
    frame_bytes_median: float | None = None
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class StreamRun:
    """One case (N clients, one mode) and what each client measured; ``row`` is its BENCHMARK.md result row."""

    config: ClientBenchConfig
    health: dict[str, Any]
    loaded: dict[str, Any]
    clients: list[ClientBenchResult]
    latencies_ms: list[list[float]]  # per client, every measured motion-to-photon
    wall_s: float  # first measured pose sent -> last frame received, over all clients

    @property
    def frames(self) -> int:
        return sum(c.frames_received for c in self.clients)

    @property
    def errors(self) -> int:
        return sum(c.errors for c in self.clients)

    def row(self) -> dict[str, Any]:
        from .client_results import stream_row

        return stream_row(self)


# ----- measuring --------------------------------------------------------------------------------------------------
@dataclass
class _Tally:
    """What one client saw in its measured phase."""

    latencies_ms: list[float] = field(default_factory=list)
    render_ms: list[float] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    frame_bytes: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    poses_sent: int = 0
    started: float | None = None  # perf_counter when its first measured pose was sent
    ended: float | None = None  # perf_counter of its last frame (or error) received


@dataclass
class _Context:
    config: ClientBenchConfig
    url: str
    headers: dict[str, str]
    poses: list[list[list[float]]]  # world_to_camera of each pose of the path
    view: dict[str, object]
    warmed: int = 0
    go: asyncio.Event = field(default_factory=asyncio.Event)
    start: float = 0.0  # perf_counter when the measured phase starts (set when the last client warmed up)

    def arrive(self) -> None:
        """A client finished warming up (or failed to): the last one to arrive starts everybody."""
        self.warmed += 1
        if self.warmed == self.config.clients:
            self.start = time.perf_counter() + 0.05
            self.go.set()


def bench_client_main(config: ClientBenchConfig, console=None) -> ClientBenchResult:  # console: rich Console
    """Measure one client, print a summary (stderr), write ``config.out`` if set, return the result."""
    from rich.console import Console

    console = console or Console(stderr=True)
    result = run_async(measure(config))
    lat = result.motion_to_photon
    latency = "no frame" if lat is None else \
        f"motion-to-photon median {lat.median_ms:.2f} ms, p90 {lat.p90_ms:.2f}, p99 {lat.p99_ms:.2f}"
    console.print(f"{result.server} ({result.device}, {result.backend}, scene {result.scene}): {result.mode}, "
                  f"{result.frames_received}/{result.poses_sent} poses answered, {result.frames_per_s:.1f} frames/s; "
                  f"{latency}; {result.errors} errors {result.errors_by_kind or ''}")
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"wrote {config.out}")
    return result


def run_async(coroutine):
    """``asyncio.run``, on uvloop where it is installed (less of the client's own time in each measured latency)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    if not hasattr(uvloop, "run"):  # uvloop < 0.18
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def measure(config: ClientBenchConfig) -> ClientBenchResult:
    """Connect one client, send ``warmup + poses`` poses along the path, and time their frames."""
    run = await measure_clients(replace(config, clients=1))
    return run.clients[0]


async def measure_clients(config: ClientBenchConfig) -> StreamRun:
    """Run ``config.clients`` clients at once (see the module docstring) and gather what each measured."""
    import httpx

    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    async with httpx.AsyncClient(base_url=config.server_url, headers=headers, timeout=config.timeout_s) as http:
        health = await _get_json(http, "/health")
        loaded = (await _get_json(http, "/scenes"))["loaded"]
    if loaded is None:
        raise ValueError(f"{config.server_url}: no scene is loaded; start the server with a scene or POST /scenes/load")
    ctx = _Context(config, config.server_url, headers, _path_poses(config, loaded), _view_message(config, loaded))
    # every wait for a message is bounded by timeout_s; this only bounds the run as a whole
    per_pose_s = 1.0 / config.rate_hz if config.rate_hz > 0 else config.timeout_s
    deadline = config.timeout_s * (config.warmup + 4) + config.poses * per_pose_s
    tallies = await asyncio.wait_for(asyncio.gather(*(_client(i, ctx) for i in range(config.clients))), deadline)
    results = [_result(config, health, loaded, i, t) for i, t in enumerate(tallies)]
    starts = [t.started for t in tallies if t.started is not None]
    ends = [t.ended for t in tallies if t.ended is not None]
    wall = max(ends) - min(starts) if starts and ends else 0.0
    return StreamRun(config, health, loaded, results, [t.latencies_ms for t in tallies], round(wall, 4))


async def _get_json(http, route: str) -> dict:
    response = await http.get(route)
    if response.status_code != 200:
        raise ValueError(f"{route}: HTTP {response.status_code}: {response.text[:200]}")
    return response.json()


def _path_poses(config: ClientBenchConfig, loaded: dict[str, Any]) -> list[list[list[float]]]:
    spec = PathSpec(center=loaded["center"], extent=loaded["extent"], grid=int(loaded.get("grid", 1)),
                    width=config.width, height=config.height, fov_x_deg=config.fov_x_deg)
    rigs = orbit_path(spec) if config.path == "orbit" else head_path(spec)
    return [rig.head.world_to_camera.tolist() for rig in rigs]


def _view_message(config: ClientBenchConfig, loaded: dict[str, Any]) -> dict[str, object]:
    return {"type": "config", "width": config.width, "height": config.height, "fov_x_deg": config.fov_x_deg,
            "stereo": config.stereo, "ipd": 0.064 * loaded["extent"], "format": config.format,
            "quality": config.quality}


async def _client(index: int, ctx: _Context) -> _Tally:
    """One client: connect, warm up, wait for the others, then the measured poses. Errors are counted, not raised."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    config, tally = ctx.config, _Tally()
    arrived = False
    ws_url = "ws" + ctx.url.removeprefix("http").rstrip("/") + "/stream"
    try:
        # compression=None: frames are JPEG/PNG already; deflating them would cost both ends tens of ms
        async with connect(ws_url, additional_headers=ctx.headers, max_size=2**28, compression=None,
                           open_timeout=config.timeout_s, close_timeout=10) as ws:
            await ws.send(json.dumps(ctx.view))
            receiver = _Receiver(ws, ctx, index)
            for pose_id in range(config.warmup):  # not timed; its errors count all the same
                await receiver.send(pose_id)
                await receiver.until_resolved(pose_id, tally)
            ctx.arrive()
            arrived = True
            await ctx.go.wait()
            receiver.timing = True
            if config.rate_hz > 0:
                await _paced(receiver, ctx, index, tally)
            else:
                await _closed_loop(receiver, ctx, tally)
    except ConnectionClosed as err:
        code = err.rcvd.code if err.rcvd is not None else "none"
        tally.errors[f"closed-{code}"] += 1
    except (TimeoutError, asyncio.TimeoutError):  # the same class from Python 3.11 on
        tally.errors["timeout"] += 1
    except (InvalidHandshake, OSError) as err:
        tally.errors[f"connect-{type(err).__name__}"] += 1
    finally:
        if not arrived:
            ctx.arrive()
    return tally


class _Receiver:
    """Sends poses on one stream and reads what comes back, checking every frame."""

    def __init__(self, ws, ctx: _Context, index: int) -> None:
        self.ws, self.ctx = ws, ctx
        self.offset = index * len(ctx.poses) // ctx.config.clients  # each client from its own place on the path
        self.sent_at: dict[int, float] = {}
        self.resolved = -1  # newest pose id answered (or refused) so far
        self.timing = False  # whether frames are timed (the measured phase) or only checked (warm-up)
        self.expected = (ctx.config.width, ctx.config.height, 2 if ctx.config.stereo else 1, ctx.config.format)

    async def send(self, pose_id: int) -> None:
        pose = self.ctx.poses[(self.offset + pose_id) % len(self.ctx.poses)]
        self.sent_at[pose_id] = time.perf_counter()
        await self.ws.send(json.dumps({"type": "pose", "id": pose_id, "world_to_camera": pose}))

    async def until_resolved(self, pose_id: int, tally: _Tally) -> None:
        """Read messages until pose ``pose_id`` (or a newer one) was answered or refused."""
        while self.resolved < pose_id:
            await self.receive(tally)

    async def receive(self, tally: _Tally) -> None:
        message = await asyncio.wait_for(self.ws.recv(), self.ctx.config.timeout_s)
        now = time.perf_counter()
        if isinstance(message, str):
            error = json.loads(message)
            tally.errors[f"server-error-{error.get('status', '?')}"] += 1
            pose_id = error.get("pose_id")
            if isinstance(pose_id, int) and pose_id in self.sent_at:
                self.resolved = max(self.resolved, pose_id)
                if self.timing:
                    tally.ended = now
            return
        try:
            header = FrameHeader.unpack(message)
        except ValueError:
            tally.errors["bad-frame"] += 1
            return
        payload = memoryview(message)[HEADER.size:]
        got = (header.width, header.height, header.eyes, header.format)
        if header.payload_bytes != len(payload) or got != self.expected or not _well_formed(header.format, payload):
            tally.errors["bad-frame"] += 1
        elif header.pose_id not in self.sent_at or header.pose_id <= self.resolved:
            tally.errors["wrong-pose"] += 1
        elif self.timing:
            tally.latencies_ms.append((now - self.sent_at[header.pose_id]) * 1e3)
            tally.render_ms.append(header.render_ms)
            tally.encode_ms.append(header.encode_ms)
            tally.frame_bytes.append(header.payload_bytes)
            tally.ended = now
        self.resolved = max(self.resolved, header.pose_id)


def _well_formed(fmt: str, payload: memoryview) -> bool:
    """JPEG: starts with SOI and ends with EOI; PNG: the signature. Raw frames are checked by their size."""
    if fmt == "jpeg":
        return bytes(payload[:2]) == b"\xff\xd8" and bytes(payload[-2:]) == b"\xff\xd9"
    if fmt == "png":
        return bytes(payload[:8]) == b"\x89PNG\r\n\x1a\n"
    return True


async def _closed_loop(receiver: _Receiver, ctx: _Context, tally: _Tally) -> None:
    first = ctx.config.warmup
    tally.started = time.perf_counter()
    for pose_id in range(first, first + ctx.config.poses):
        await receiver.send(pose_id)
        tally.poses_sent += 1
        await receiver.until_resolved(pose_id, tally)


async def _paced(receiver: _Receiver, ctx: _Context, index: int, tally: _Tally) -> None:
    config = ctx.config
    period = 1.0 / config.rate_hz
    first, last = config.warmup, config.warmup + config.poses - 1
    begin = ctx.start + period * index / config.clients  # staggered: the streams' poses do not arrive in bursts
    tally.started = begin

    async def send_all() -> None:
        for k, pose_id in enumerate(range(first, last + 1)):
            await asyncio.sleep(max(0.0, begin + k * period - time.perf_counter()))
            await receiver.send(pose_id)
            tally.poses_sent += 1

    sender = asyncio.create_task(send_all())
    try:
        await receiver.until_resolved(last, tally)
    finally:
        if not sender.done():
            sender.cancel()
        elif sender.exception() is not None:
            raise sender.exception()  # type: ignore[misc]


def _result(config: ClientBenchConfig, health: dict[str, Any], loaded: dict[str, Any], index: int,
            tally: _Tally) -> ClientBenchResult:
    frames = len(tally.latencies_ms)
    wall = (tally.ended - tally.started) if tally.started is not None and tally.ended is not None else 0.0

    def median(values: list[float] | list[int]) -> float | None:
        return round(float(np.median(values)), 3) if values else None

    return ClientBenchResult(
        server=config.server_url, scene=loaded["name"], device=str(health.get("device")),
        backend=str(health.get("backend")), mode=config.mode, rate_hz=config.rate_hz, path=config.path,
        width=config.width, height=config.height, eyes=2 if config.stereo else 1, format=config.format,
        poses_sent=tally.poses_sent, frames_received=frames, poses_dropped=tally.poses_sent - frames,
        motion_to_photon=LatencyStats.of(tally.latencies_ms) if frames else None,
        server_render_ms_median=median(tally.render_ms), server_encode_ms_median=median(tally.encode_ms),
        frames_per_s=round(frames / wall, 3) if wall > 0 else 0.0, date=datetime.date.today().isoformat(),
        client=index, wall_s=round(wall, 4), frame_bytes_median=median(tally.frame_bytes),
        errors=sum(tally.errors.values()), errors_by_kind=dict(sorted(tally.errors.items())),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m server.client --server URL ...``: the cases of ``server.cli.BenchClient`` into one JSON + plot.

    Exit status 1 when any client counted an error.
    """
    import shlex
    import sys

    import tyro
    from rich.console import Console

    from .cli import BenchClient

    args = sys.argv[1:] if argv is None else argv
    client = tyro.cli(BenchClient, args=args, prog="python -m server.client")
    client.command = shlex.join(["python3", "-m", "server.client", *args])
    return client.run(Console(stderr=True))


if __name__ == "__main__":
    raise SystemExit(main())
