"""Load test of the render server: N concurrent clients for D seconds, then it stops by itself.

Half the clients (``--streams``) hold a WebSocket ``/stream`` open and send poses at their own rate
(``--pose-rate-hz``, staggered); the others ``POST /render`` one frame after another (closed loop). Every client
follows the ``orbit`` (or ``head``) path of BENCHMARK.md around the loaded scene, from its own starting pose.
Measured on the client's clock: per-request latency of ``/render`` and motion-to-photon of the streams (pose sent ->
frame with that pose id received; the server renders only the newest pose, so only answered poses have one).
Errors are counted by kind (``http-503``, ``ws-error-422``, ``ws-close-1011``, ``ws-timeout``, ``bad-frame``, ...).

    python benchmarks/server_load.py                            # starts `gscache serve` on guitar_2k, 16 clients
    python benchmarks/server_load.py --url http://127.0.0.1:8765 --clients 16 --duration-s 30

Without ``--url`` it starts ``gscache serve SCENE`` on a free loopback port with limits that admit the clients
(``--max-streams``, ``--max-inflight-requests``, ``--max-queued-renders``) and stops it (SIGINT) afterwards.
Writes ``benchmarks/results/<date>-<cpu-or-gpu>-server-load-<N>clients.json`` (BENCHMARK.md's file shape, one row)
and a latency histogram ``.png`` beside it. Exit status 1 when any error was counted.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

DEFAULT_SCENE = ROOT / "assets" / "fixtures" / "guitar_2k.ply"


@dataclass
class LoadConfig:
    """A load run. Without ``url`` a ``gscache serve`` is started on ``scene`` (loopback, free port) for the run."""

    url: str | None = None
    """Server to load, e.g. http://127.0.0.1:8765; none: start one on --scene."""
    scene: Path = DEFAULT_SCENE
    """Scene of the server started here (ignored with --url)."""
    backend: str = "torch"
    """Backend of the server started here."""
    device: str = "cpu"
    """Device of the server started here."""
    server_threads: int | None = None
    """OMP_NUM_THREADS of the server started here (none: torch's default). On a CPU shared with other work, 1
    avoids OpenMP threads waiting on each other (render medians of seconds instead of tens of ms)."""
    token: str | None = None
    """The server's token; default: $GSCACHE_SERVER_TOKEN."""
    clients: int = 16
    streams: int | None = None
    """How many of the clients are WebSocket streams (the others POST /render); half when omitted."""
    duration_s: float = 30.0
    """How long clients send; then each waits (at most timeout_s) for its last answer and closes."""
    pose_rate_hz: float = 20.0
    """Rate at which each stream sends poses (stale ones are dropped by the server)."""
    path: Literal["orbit", "head"] = "orbit"
    width: int = 64
    height: int = 48
    stereo: bool = False
    format: Literal["jpeg", "png", "raw"] = "jpeg"
    quality: int = 80
    timeout_s: float = 60.0
    """Longest wait for any one answer (frame, response, connection) before it counts as a timeout."""
    warmup_requests: int = 2
    """/render requests sent one after another before the clients start (not measured)."""
    startup_timeout_s: float = 180.0
    """Longest wait for the server started here to answer /health."""
    out_dir: Path | None = ROOT / "benchmarks" / "results"
    """Where the JSON and plot go; none: write nothing."""
    what: str | None = None
    """File name part after <date>-<device>-; default server-load-<clients>clients."""
    plot: bool = True

    def __post_init__(self) -> None:
        if self.clients < 1 or self.duration_s <= 0 or self.pose_rate_hz <= 0 or self.timeout_s <= 0:
            raise ValueError("clients >= 1, duration_s > 0, pose_rate_hz > 0 and timeout_s > 0 expected")
        if self.streams is None:
            self.streams = self.clients // 2
        if not 0 <= self.streams <= self.clients:
            raise ValueError(f"streams: expected 0..{self.clients}, got {self.streams}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http://host:port, got {self.url!r}")
        if self.token is None:
            self.token = os.environ.get("GSCACHE_SERVER_TOKEN") or None

    @property
    def http_clients(self) -> int:
        return self.clients - (self.streams or 0)


@dataclass
class ClientStats:
    """What one client saw."""

    kind: Literal["stream", "http"]
    index: int
    responses: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # /render round trips, or motion-to-photon
    render_ms: list[float] = field(default_factory=list)  # the server's render time of each answer
    poses_sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class LoadRun:
    """A finished run: the result JSON (BENCHMARK.md shape), every client's stats, and the raw latencies."""

    result: dict[str, Any]
    clients: list[ClientStats]
    json_path: Path | None = None
    plot_path: Path | None = None

    @property
    def row(self) -> dict[str, Any]:
        return self.result["rows"][0]


# ----- a server for the run -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_command(config: LoadConfig, port: int) -> list[str]:
    """``gscache serve`` on loopback with limits that admit every client of ``config``."""
    streams = config.streams or 0
    return [sys.executable, "-m", "gscache", "serve", str(config.scene), "--host", "127.0.0.1", "--port", str(port),
            "--backend", config.backend, "--device", config.device, "--max-streams", str(max(1, streams)),
            "--max-inflight-requests", str(max(32, config.http_clients)),
            "--max-queued-renders", str(max(8, config.clients)), "--log-level", "warning"]


@contextmanager
def served(config: LoadConfig) -> Iterator[str]:
    """Start ``gscache serve`` (a child process, loopback only), yield its URL; stop it with SIGINT (kill after 60 s).

    Its output goes to a temporary file (never a pipe that could fill up and block it); on failure the tail of it
    is in the exception.
    """
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile(mode="w+") as log:
        env = dict(os.environ)
        if config.server_threads is not None:
            env["OMP_NUM_THREADS"] = str(config.server_threads)
        proc = subprocess.Popen(serve_command(config, port), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                text=True, env=env)
        try:
            deadline = time.monotonic() + config.startup_timeout_s
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"gscache serve did not come up: {log.read()[-2000:]}")
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


# ----- clients --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Context:
    url: str
    headers: dict[str, str]
    poses: list[list[list[float]]]  # world_to_camera of each path pose
    view: dict[str, Any]  # the view fields of /render and of the stream's config message
    start: float  # perf_counter when every client starts
    deadline: float  # perf_counter when clients stop sending
    config: LoadConfig


async def _stream_client(index: int, ctx: _Context) -> ClientStats:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    from server.stream import HEADER, FrameHeader

    stats = ClientStats("stream", index)
    config = ctx.config
    period = 1.0 / config.pose_rate_hz
    offset = index * len(ctx.poses) // max(1, config.clients)
    sent_at: dict[int, float] = {}
    last_sent, last_answered = [-1], [-1]
    ws_url = "ws" + ctx.url.removeprefix("http").rstrip("/") + "/stream"
    expected = (config.width, config.height, 2 if config.stereo else 1, config.format)

    async def send_poses(ws) -> None:
        first = ctx.start + period * index / max(1, config.streams or 1)  # staggered
        pose_id = 0
        while (due := first + pose_id * period) < ctx.deadline:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            pose = ctx.poses[(offset + pose_id) % len(ctx.poses)]
            sent_at[pose_id] = time.perf_counter()
            await ws.send(json.dumps({"type": "pose", "id": pose_id, "world_to_camera": pose}))
            last_sent[0] = pose_id
            pose_id += 1
        stats.poses_sent = pose_id

    try:
        async with connect(ws_url, additional_headers=ctx.headers, max_size=2**26, open_timeout=config.timeout_s,
                           close_timeout=10) as ws:
            await ws.send(json.dumps({"type": "config", **ctx.view}))
            sender = asyncio.create_task(send_poses(ws))
            try:
                while not (sender.done() and last_answered[0] >= last_sent[0]):
                    try:
                        message = await asyncio.wait_for(ws.recv(), config.timeout_s)
                    except TimeoutError:
                        stats.errors["ws-timeout"] += 1
                        break
                    if isinstance(message, str):
                        error = json.loads(message)
                        stats.errors[f"ws-error-{error.get('status', '?')}"] += 1
                        continue
                    header = FrameHeader.unpack(message)
                    got = (header.width, header.height, header.eyes, header.format)
                    if header.payload_bytes != len(message) - HEADER.size or got != expected:
                        stats.errors["bad-frame"] += 1
                    elif header.pose_id not in sent_at or header.pose_id <= last_answered[0]:
                        stats.errors["wrong-pose"] += 1
                    else:
                        stats.latencies_ms.append((time.perf_counter() - sent_at[header.pose_id]) * 1e3)
                        stats.render_ms.append(header.render_ms)
                        stats.responses += 1
                        last_answered[0] = header.pose_id
            finally:
                if not sender.done():
                    sender.cancel()
                elif sender.exception() is not None:
                    raise sender.exception()  # type: ignore[misc]
    except ConnectionClosed as err:
        code = err.rcvd.code if err.rcvd is not None else "none"
        stats.errors[f"ws-close-{code}"] += 1
    except (InvalidHandshake, OSError, TimeoutError, ValueError) as err:
        stats.errors[f"ws-{type(err).__name__}"] += 1
    return stats


async def _http_client(index: int, ctx: _Context) -> ClientStats:
    import httpx

    stats = ClientStats("http", index)
    offset = (index + (ctx.config.streams or 0)) * len(ctx.poses) // max(1, ctx.config.clients)
    async with httpx.AsyncClient(base_url=ctx.url, headers=ctx.headers, timeout=ctx.config.timeout_s) as http:
        k = 0
        while time.perf_counter() < ctx.deadline:
            body = {**ctx.view, "world_to_camera": ctx.poses[(offset + k) % len(ctx.poses)]}
            k += 1
            sent = time.perf_counter()
            try:
                response = await http.post("/render", json=body)
            except httpx.TimeoutException:
                stats.errors["http-timeout"] += 1
                continue
            except httpx.HTTPError as err:
                stats.errors[f"http-{type(err).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
            elapsed_ms = (time.perf_counter() - sent) * 1e3
            if response.status_code != 200:
                stats.errors[f"http-{response.status_code}"] += 1
                retry = response.headers.get("retry-after", "")
                await asyncio.sleep(min(1.0, float(retry)) if retry.isdigit() else 0.05)
                continue
            if response.headers.get("x-frame-format") != ctx.config.format or not response.content:
                stats.errors["bad-frame"] += 1
                continue
            stats.latencies_ms.append(elapsed_ms)
            stats.render_ms.append(float(response.headers.get("x-render-ms", "nan")))
            stats.responses += 1
    return stats


async def _run_clients(config: LoadConfig, url: str) -> tuple[dict[str, Any], dict[str, Any], list[ClientStats]]:
    import httpx

    from renderer import PathSpec, head_path, orbit_path

    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=config.timeout_s) as http:
        health = (await http.get("/health")).raise_for_status().json()
        loaded = (await http.get("/scenes")).raise_for_status().json()["loaded"]
    if loaded is None:
        raise ValueError(f"{url}: no scene is loaded; start the server with a scene or POST /scenes/load")
    spec = PathSpec(center=loaded["center"], extent=loaded["extent"], width=config.width, height=config.height,
                    fov_x_deg=60.0)
    rigs = orbit_path(spec) if config.path == "orbit" else head_path(spec)
    poses = [rig.head.world_to_camera.tolist() for rig in rigs]
    view = {"width": config.width, "height": config.height, "fov_x_deg": 60.0, "stereo": config.stereo,
            "ipd": 0.064 * loaded["extent"], "format": config.format, "quality": config.quality}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=config.timeout_s) as http:
        for k in range(config.warmup_requests):  # the first renders of a fresh server are slow (allocations, caches)
            (await http.post("/render", json={**view, "world_to_camera": poses[k % len(poses)]})).raise_for_status()
    start = time.perf_counter() + 0.2
    ctx = _Context(url, headers, poses, view, start, start + config.duration_s, config)
    tasks = [_stream_client(i, ctx) for i in range(config.streams or 0)]
    tasks += [_http_client(i, ctx) for i in range(config.http_clients)]
    # every client stops sending at the deadline and waits at most timeout_s per answer: bounded
    clients = await asyncio.wait_for(asyncio.gather(*tasks), config.duration_s + 4 * config.timeout_s)
    return health, loaded, list(clients)


# ----- results --------------------------------------------------------------------------------------------------
def _percentiles(values: list[float], prefix: str) -> dict[str, float | None]:
    if not values:
        return {f"{prefix}_p50": None, f"{prefix}_p90": None, f"{prefix}_p99": None, f"{prefix}_max": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {f"{prefix}_p50": round(float(p50), 3), f"{prefix}_p90": round(float(p90), 3),
            f"{prefix}_p99": round(float(p99), 3), f"{prefix}_max": round(float(a.max()), 3)}


def _device_model(device: str, url: str) -> str:
    """The server's CPU or GPU model when it runs on this machine, else ``<device> at <host>``."""
    from urllib.parse import urlsplit

    from server.config import is_loopback

    host = urlsplit(url).hostname or ""
    if not is_loopback(host):
        return f"{device} at {host}"
    import torch

    from server.bench_results import device_name

    return device_name(torch.device(device))


def build_result(config: LoadConfig, url: str, health: dict[str, Any], loaded: dict[str, Any],
                 clients: list[ClientStats], elapsed_s: float, command: str) -> dict[str, Any]:
    """The result JSON: BENCHMARK.md's file shape with one row for the whole run."""
    from server.bench_results import git_revision

    streams = [c for c in clients if c.kind == "stream"]
    https = [c for c in clients if c.kind == "http"]
    errors: Counter[str] = Counter()
    for client in clients:
        errors.update(client.errors)
    frames = sum(c.responses for c in streams)
    requests = sum(c.responses for c in https)
    poses_sent = sum(c.poses_sent for c in streams)
    render_ms = [v for c in clients for v in c.render_ms if math.isfinite(v)]
    device = str(health.get("device", "unknown"))
    row: dict[str, Any] = {
        "scene": loaded["name"], "gaussians": loaded["gaussians"], "sh_degree": loaded.get("sh_degree"),
        "clients": config.clients, "streams": len(streams), "http_clients": len(https),
        "duration_s": config.duration_s, "wall_s": round(elapsed_s, 3), "requests": requests, "frames": frames,
        "errors": sum(errors.values()), "errors_by_kind": dict(sorted(errors.items())),
        **_percentiles([v for c in https for v in c.latencies_ms], "latency_ms"),
        **_percentiles([v for c in streams for v in c.latencies_ms], "mtp_ms"),
        "poses_sent": poses_sent, "poses_dropped": poses_sent - frames, "pose_rate_hz": config.pose_rate_hz,
        "responses_min_per_client": min((c.responses for c in clients), default=0),
        "frames_per_s": round((frames + requests) / elapsed_s, 3) if elapsed_s > 0 else None,
        "server_render_ms_p50": round(float(np.median(render_ms)), 3) if render_ms else None,
        "width": config.width, "height": config.height, "eyes": 2 if config.stereo else 1, "format": config.format,
        "path": config.path, "renderer": health.get("backend"), "device": device,
        "gpus": 1 if device.startswith("cuda") else 0,
    }
    return {"command": command, "revision": git_revision(), "gpu": _device_model(device, url),
            "date": datetime.date.today().isoformat(), "rows": [row]}


def plot_latencies(run: LoadRun, path: Path) -> None:
    """Histogram (log-spaced bins) of /render latency and stream motion-to-photon, with p50 and p99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = run.row
    series = [("POST /render latency", "latency_ms", "C0", [v for c in run.clients if c.kind == "http"
                                                            for v in c.latencies_ms]),
              ("stream motion-to-photon", "mtp_ms", "C1", [v for c in run.clients if c.kind == "stream"
                                                           for v in c.latencies_ms])]
    everything = [v for *_, values in series for v in values if v > 0]
    fig, ax = plt.subplots(figsize=(8.0, 4.8))
    if everything:
        bins = np.geomspace(min(everything) * 0.9, max(everything) * 1.1, 40)
        for label, key, colour, values in series:
            if not values:
                continue
            ax.hist(values, bins=bins, alpha=0.55, color=colour,
                    label=f"{label} (n={len(values)}; p50 {row[key + '_p50']:.0f} ms, p99 {row[key + '_p99']:.0f} ms)")
            for q, style in (("p50", "-"), ("p99", "--")):
                ax.axvline(row[f"{key}_{q}"], color=colour, linestyle=style, linewidth=1.2)
        ax.set_xscale("log")
    ax.set_xlabel("ms (client clock); solid: p50, dashed: p99")
    ax.set_ylabel("answers")
    ax.set_title(f"{row['clients']} clients ({row['streams']} streams at {row['pose_rate_hz']:g} Hz, "
                 f"{row['http_clients']} /render) for {row['duration_s']:g} s; {row['scene']} "
                 f"{row['width']}x{row['height']} {row['format']}, {row['renderer']} on {row['device']}; "
                 f"errors {row['errors']}", fontsize="small")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    result = run.result
    fig.suptitle(f"{result['gpu']} - {result['revision'][:12]} - {result['date']}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_load(config: LoadConfig, command: str | None = None) -> LoadRun:
    """Run the clients against ``config.url`` (or a server started here), write the result files, return the run."""
    from server.bench_results import slug

    command = command or "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    with _server_url(config) as url:
        load_before = _load_average()
        started = time.perf_counter()
        health, loaded, clients = asyncio.run(_run_clients(config, url))
        elapsed = time.perf_counter() - started
    run = LoadRun(build_result(config, url, health, loaded, clients, elapsed, command), clients)
    # the machine's 1-minute load average before and after: CPU figures mean little on a busy machine
    run.row["host_load_avg_1m"] = [load_before, _load_average()]
    run.row["host_cpus"] = os.cpu_count()
    run.row["server_threads"] = config.server_threads if config.url is None else None
    if config.out_dir is not None:
        config.out_dir.mkdir(parents=True, exist_ok=True)
        what = config.what or f"server-load-{config.clients}clients"
        stem = f"{run.result['date']}-{slug(run.result['gpu'])}-{slug(what)}"
        run.json_path = config.out_dir / f"{stem}.json"
        run.json_path.write_text(json.dumps(run.result, indent=2, allow_nan=False) + "\n")
        if config.plot:
            run.plot_path = run.json_path.with_suffix(".png")
            plot_latencies(run, run.plot_path)
    return run


@contextmanager
def _server_url(config: LoadConfig) -> Iterator[str]:
    if config.url is not None:
        yield config.url
    else:
        with served(config) as url:
            yield url


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def summary(run: LoadRun) -> str:
    row = run.row
    return (f"{row['clients']} clients ({row['streams']} streams, {row['http_clients']} /render) for "
            f"{row['duration_s']:g} s on {run.result['gpu']} ({row['renderer']}, {row['device']}): "
            f"{row['requests']} requests, {row['frames']} stream frames, {row['errors']} errors "
            f"{row['errors_by_kind'] or ''}; /render latency p50 {row['latency_ms_p50']} ms, p99 "
            f"{row['latency_ms_p99']} ms; motion-to-photon p50 {row['mtp_ms_p50']} ms, p99 {row['mtp_ms_p99']} ms; "
            f"fewest answers per client {row['responses_min_per_client']}")


def main() -> int:
    import tyro

    config = tyro.cli(LoadConfig)
    run = run_load(config)
    print(summary(run))
    for written in (run.json_path, run.plot_path):
        if written is not None:
            print(f"wrote {written.relative_to(ROOT) if written.is_relative_to(ROOT) else written}")
    return 1 if run.row["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
