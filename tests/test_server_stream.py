"""The stream path of the render server: render/encode pipelining, the newest pose picked when its render starts,
planar frames for GPU JPEG, benchmark scenes served with their path frame, and the multi-client bench client.

CPU tests run a real uvicorn server on a free loopback port (torch backend, tiny frames); the ``gpu`` tests check
the CUDA path (render thread on its own stream, nvJPEG on planar frames) against the library's render.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from data import save_scene  # noqa: E402
from renderer import Camera, PathSpec, Splats, StereoRig, head_path, intrinsics_from_fov, look_at, render  # noqa: E402
from server.bench_scenes import resolve_scene  # noqa: E402
from server.cli import BenchClient, Serve  # noqa: E402
from server.client import ClientBenchConfig, _path_poses, _well_formed, measure_clients  # noqa: E402
from server.client_results import write_stream_result  # noqa: E402
from server.config import ServerConfig, ServerLimits  # noqa: E402
from server.encode import FrameEncoder, to_uint8  # noqa: E402
from server.frames import DirectFrameSource, FrameRequest  # noqa: E402
from server.runner import BackgroundServer  # noqa: E402
from server.scenes import LoadedScene  # noqa: E402
from server.stream import HEADER, FrameHeader  # noqa: E402

W, H = 24, 16
EYE = (0.0, 0.0, -4.0)
FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "fixtures" / "guitar_2k.ply"
pytestmark = pytest.mark.timeout(180)


# ----- helpers ----------------------------------------------------------------------------------------------------
class TimedSource(DirectFrameSource):
    """Renders like the server's default, slowed down by ``delay_s``, recording when each render ran."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(backend="torch")
        object.__setattr__(self, "delay_s", delay_s)
        object.__setattr__(self, "intervals", [])
        object.__setattr__(self, "rendering", threading.Event())

    def render(self, scene: LoadedScene, request: FrameRequest) -> torch.Tensor:
        start = time.perf_counter()
        self.rendering.set()
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return super().render(scene, request)
        finally:
            self.rendering.clear()
            self.intervals.append((start, time.perf_counter()))


class TimedEncoder(FrameEncoder):
    """Encodes like the server's encoder, slowed down by ``delay_s``, recording when each encode ran."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(gpu_jpeg=False)
        self.delay_s = delay_s
        self.intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def encode(self, image, fmt, quality=90, planar=False):
        start = time.perf_counter()
        time.sleep(self.delay_s)
        encoded = super().encode(image, fmt, quality, planar)
        with self._lock:
            self.intervals.append((start, time.perf_counter()))
        return encoded


def camera(eye=EYE, width: int = W, height: int = H) -> Camera:
    return Camera(look_at(eye, (0, 0, 0), (0, -1, 0)), intrinsics_from_fov(width, height, 60.0), width, height)


def _pose(pose_id: int, cam: Camera) -> str:
    return json.dumps({"type": "pose", "id": pose_id, "world_to_camera": cam.world_to_camera.tolist()})


def _config(**view) -> str:
    return json.dumps({"type": "config", "width": W, "height": H, "fov_x_deg": 60.0, "format": "raw", **view})


async def _frame(ws) -> tuple[FrameHeader, bytes]:
    message = await asyncio.wait_for(ws.recv(), 60)
    assert isinstance(message, bytes), message
    return FrameHeader.unpack(message), message[HEADER.size:]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    save_scene(root / "rand.ply", Splats.random(300, sh_degree=1, seed=0))
    return root


def _server(served: Path, source=None, **config) -> BackgroundServer:
    limits = config.pop("limits", ServerLimits(max_streams=8, max_queued_renders=16))
    return BackgroundServer(ServerConfig(scenes_dir=served, scene=served / "rand.ply", port=0, backend="torch",
                                         limits=limits, **config), source)


def _stream_poses_paced(url: str, count: int, rate_hz: float, after_warmup=None) -> list[int]:
    """One warm-up frame (then ``after_warmup()``), then ``count`` poses at ``rate_hz`` on one stream; return the
    pose ids of the frames, up to the last pose."""
    cams = [camera(eye=(0.05 * i, 0.0, -4.0)) for i in range(count)]

    async def run() -> list[int]:
        async with connect(url + "/stream") as ws:
            await ws.send(_config())
            await ws.send(_pose(-1, camera()))
            assert (await _frame(ws))[0].pose_id == -1
            if after_warmup is not None:
                after_warmup()

            async def send() -> None:
                for i, cam in enumerate(cams):
                    await ws.send(_pose(i, cam))
                    await asyncio.sleep(1.0 / rate_hz)

            sender = asyncio.create_task(send())
            answered: list[int] = []
            while not answered or answered[-1] != count - 1:
                header, _ = await _frame(ws)
                answered.append(header.pose_id)
            await sender
            return answered

    return asyncio.run(run())


# ----- pipelining -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [2, 1])
def test_stream_renders_the_next_frame_while_the_last_is_encoded(served: Path, depth: int) -> None:
    source = TimedSource(delay_s=0.1)
    encoder = TimedEncoder(delay_s=0.1)
    with _server(served, source, stream_pipeline_depth=depth) as running:
        running.state.pipeline.encoder = encoder

        def forget_warmup() -> None:  # the warm-up frame was sent: nothing renders or encodes now
            source.intervals.clear()
            encoder.intervals.clear()

        answered = _stream_poses_paced(running.ws_url, count=50, rate_hz=50.0, after_warmup=forget_warmup)
    assert answered == sorted(set(answered)) and answered[-1] == 49  # in order, newest last
    renders, encodes = source.intervals, encoder.intervals
    assert len(renders) == len(encodes) == len(answered) >= 3
    # render k+1 against encode k: overlapping when pipelined, strictly after it when not
    overlaps = [renders[k + 1][0] < encodes[k][1] for k in range(len(encodes) - 1)]
    if depth == 2:
        assert sum(overlaps) >= len(overlaps) // 2, (renders, encodes)
    else:
        assert not any(overlaps), (renders, encodes)


def test_stream_frame_waiting_for_the_render_thread_shows_the_newest_pose(served: Path) -> None:
    """A pose is picked when its render starts, not when it was queued behind other streams' renders."""
    source = TimedSource(delay_s=0.4)
    with _server(served, source) as running:
        async def run() -> tuple[int, int]:
            async with connect(running.ws_url + "/stream") as a, connect(running.ws_url + "/stream") as b:
                await a.send(_config())
                await b.send(_config())
                await a.send(_pose(100, camera()))
                while not source.rendering.is_set():  # A's frame occupies the render thread
                    await asyncio.sleep(0.005)
                await b.send(_pose(0, camera()))
                while running.state.worker.queued < 2:  # B's render is queued behind A's
                    await asyncio.sleep(0.005)
                await b.send(_pose(1, camera(eye=(0.1, 0.0, -4.0))))
                header_a, _ = await _frame(a)
                header_b, _ = await _frame(b)
                return header_a.pose_id, header_b.pose_id

        assert asyncio.run(run()) == (100, 1)


def test_stream_pose_refused_by_a_full_render_queue_is_answered_with_its_id(served: Path) -> None:
    source = TimedSource(delay_s=0.5)
    limits = ServerLimits(max_streams=4, max_queued_renders=1)
    with _server(served, source, limits=limits) as running:
        async def run() -> tuple[dict, int, int]:
            async with connect(running.ws_url + "/stream") as a, connect(running.ws_url + "/stream") as b:
                await a.send(_config())
                await b.send(_config())
                await a.send(_pose(1, camera()))
                while not source.rendering.is_set():
                    await asyncio.sleep(0.005)
                await b.send(_pose(7, camera()))
                error = json.loads(await asyncio.wait_for(b.recv(), 30))
                header_a, _ = await _frame(a)
                await b.send(_pose(8, camera()))  # the queue has room again: B is served
                header_b, _ = await _frame(b)
                return error, header_a.pose_id, header_b.pose_id

        error, pose_a, pose_b = asyncio.run(run())
    assert (error["type"], error["status"], error["pose_id"]) == ("error", 503, 7)
    assert "render queue is full" in error["detail"]
    assert (pose_a, pose_b) == (1, 8)


def test_stream_never_negotiates_permessage_deflate(served: Path) -> None:
    with _server(served) as running:
        async def run() -> str | None:
            async with connect(running.ws_url + "/stream") as ws:  # the client offers permessage-deflate
                return ws.response.headers.get("Sec-WebSocket-Extensions")

        assert asyncio.run(run()) is None


def test_stream_shutdown_sends_every_frame_in_flight_then_1001(served: Path) -> None:
    source = TimedSource(delay_s=0.2)
    encoder = TimedEncoder(delay_s=0.3)
    running = _server(served, source, shutdown_grace_s=20.0).start()
    running.state.pipeline.encoder = encoder

    async def run() -> tuple[list[int], int]:
        async with connect(running.ws_url + "/stream") as ws:
            await ws.send(_config())
            await ws.send(_pose(1, camera()))
            while len(source.intervals) < 1:  # frame 1 rendered, now encoding
                await asyncio.sleep(0.005)
            await ws.send(_pose(2, camera()))
            while not source.rendering.is_set():  # frame 2 renders while frame 1 is encoded
                await asyncio.sleep(0.005)
            stopping = threading.Thread(target=running.stop)
            stopping.start()
            poses = [(await _frame(ws))[0].pose_id, (await _frame(ws))[0].pose_id]
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            stopping.join(60)
            return poses, closed.value.rcvd.code

    assert asyncio.run(run()) == ([1, 2], 1001)


# ----- frames for GPU JPEG ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eyes", [1, 2])
def test_planar_frames_hold_the_same_pixels(eyes: int) -> None:
    image = torch.rand(eyes, 5, 7, 3, generator=torch.Generator().manual_seed(eyes)) * 1.2 - 0.1
    hwc = to_uint8(image)
    chw = to_uint8(image, planar=True)
    assert hwc.shape == (5, eyes * 7, 3) and chw.shape == (3, 5, eyes * 7) and chw.is_contiguous()
    assert torch.equal(chw.permute(1, 2, 0), hwc)
    left = (image[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    assert torch.equal(hwc[:, :7], left)
    encoder = FrameEncoder(gpu_jpeg=False)
    for fmt in ("raw", "png"):
        a, b = encoder.encode(hwc, fmt), encoder.encode(chw, fmt, planar=True)
        assert a.data == b.data
    assert not encoder.wants_planar("jpeg", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"expected uint8 \[3, H, W\]"):
        encoder.encode(hwc, "raw", planar=True)


def test_client_checks_jpeg_and_png_markers() -> None:
    assert _well_formed("jpeg", memoryview(b"\xff\xd8....\xff\xd9"))
    assert not _well_formed("jpeg", memoryview(b"\xff\xd8....\x00\x00"))
    assert _well_formed("png", memoryview(b"\x89PNG\r\n\x1a\n...."))
    assert not _well_formed("png", memoryview(b"GIF89a.."))
    assert _well_formed("raw", memoryview(b"\x00" * 12))


# ----- benchmark scenes -------------------------------------------------------------------------------------------
def test_server_builds_a_bench_scene_with_its_path_frame(tmp_path: Path) -> None:
    scene_id = f"{FIXTURE}-g2"
    bench = resolve_scene(scene_id)
    config = ServerConfig(scenes_dir=tmp_path, bench_scene=scene_id, port=0, backend="torch")
    with BackgroundServer(config) as running:
        loaded = httpx.get(running.url + "/scenes", timeout=30).json()["loaded"]
        health = httpx.get(running.url + "/health", timeout=30).json()
    assert (loaded["name"], loaded["grid"], loaded["gaussians"]) == (scene_id, 2, len(bench.splats))
    assert loaded["extent"] == pytest.approx(bench.extent) and loaded["center"] == pytest.approx(bench.center)
    assert health["scene"] == scene_id and health["device_name"]
    client = ClientBenchConfig("http://x", width=32, height=24)
    expected = next(iter(head_path(bench.path_spec(32, 24))))
    assert np.allclose(_path_poses(client, loaded)[0], expected.head.world_to_camera.numpy())
    single = next(iter(head_path(PathSpec(center=bench.center, extent=bench.extent, width=32, height=24))))
    assert not np.allclose(_path_poses(client, loaded)[0], single.head.world_to_camera.numpy())  # grid matters


def test_serve_cli_config_for_a_bench_scene(tmp_path: Path) -> None:
    config = Serve(bench_scene="guitar-g8", data_dir=tmp_path, stream_pipeline_depth=1).config()
    assert (config.bench_scene, config.data_dir, config.scenes_dir, config.stream_pipeline_depth) == (
        "guitar-g8", tmp_path, tmp_path, 1)
    with pytest.raises(ValueError, match="not both"):
        ServerConfig(scenes_dir=tmp_path, scene=tmp_path / "a.ply", bench_scene="guitar")
    with pytest.raises(ValueError, match="stream_pipeline_depth"):
        ServerConfig(scenes_dir=tmp_path, stream_pipeline_depth=0)
    with pytest.raises(FileNotFoundError, match="guitar.ply"):
        BackgroundServer(ServerConfig(scenes_dir=tmp_path, bench_scene="guitar-g2", data_dir=tmp_path, port=0,
                                      backend="torch"))


# ----- the bench client -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_server(served: Path) -> Iterator[BackgroundServer]:
    with _server(served, limits=ServerLimits(max_streams=3, max_queued_renders=8)) as running:
        yield running


def test_bench_client_measures_several_clients(bench_server: BackgroundServer, tmp_path: Path) -> None:
    config = ClientBenchConfig(bench_server.url, poses=8, warmup=2, rate_hz=40.0, width=16, height=12, stereo=True,
                               path="orbit", clients=3, timeout_s=60)
    run = asyncio.run(measure_clients(config))
    assert [c.client for c in run.clients] == [0, 1, 2] and run.errors == 0
    for client in run.clients:
        assert client.poses_sent == 8 and 1 <= client.frames_received <= 8
        assert client.frames_received + client.poses_dropped == 8 and client.frames_per_s > 0
        assert client.motion_to_photon is not None and client.motion_to_photon.min_ms > 0
    row = run.row()
    assert (row["clients"], row["mode"], row["eyes"], row["errors"], row["errors_by_kind"]) == (3, "paced", 2, 0, {})
    assert row["frames"] == sum(c.frames_received for c in run.clients) == sum(p["frames"] for p in row["per_client"])
    assert row["fps"] == pytest.approx(row["frames"] / row["wall_s"], rel=1e-3)
    assert row["fps_per_client_min"] <= row["fps_per_client_median"]
    assert 0 < row["mtp_ms_p50"] <= row["mtp_ms_p90"] <= row["mtp_ms_p99"] <= row["mtp_ms_max"]
    assert row["renderer"] == "torch-server-stream" and row["gpus"] == 0 and row["frame_bytes_median"] > 0
    json_path, plot_path = write_stream_result([run], tmp_path, "stream test", "cmd", "abc123")
    result = json.loads(json_path.read_text())
    assert (result["command"], result["revision"], len(result["rows"])) == ("cmd", "abc123", 1)
    assert json_path.name.endswith("-stream-test.json")
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot_path is not None and plot_path.stat().st_size > 0


def test_bench_client_counts_errors_instead_of_failing(bench_server: BackgroundServer) -> None:
    while bench_server.state.streams.sessions:  # streams of earlier tests are still closing
        time.sleep(0.02)
    config = ClientBenchConfig(bench_server.url, poses=4, warmup=1, rate_hz=40.0, width=16, height=12,
                               stereo=False, clients=4, timeout_s=60)  # one more than the server's 3 streams
    run = asyncio.run(measure_clients(config))
    row = run.row()
    assert row["errors"] == 1 and row["errors_by_kind"] == {"closed-1013": 1}
    refused = [c for c in run.clients if c.errors]
    assert len(refused) == 1 and refused[0].frames_received == 0 and refused[0].motion_to_photon is None
    assert sum(1 for c in run.clients if c.frames_received > 0) == 3


def test_bench_client_cli_writes_every_case(bench_server: BackgroundServer, tmp_path: Path) -> None:
    from server.client import main

    while bench_server.state.streams.sessions:
        time.sleep(0.02)
    code = main(["--server", bench_server.url, "--clients", "1", "2", "--closed-loop-poses", "3", "--rate-hz", "40",
                 "--poses", "4", "--warmup", "1", "--width", "16", "--height", "12", "--mono", "--out-dir",
                 str(tmp_path), "--what", "cli", "--revision", "r1"])
    assert code == 0
    (json_path,) = tmp_path.glob("*-cli.json")
    result = json.loads(json_path.read_text())
    assert [(r["clients"], r["mode"]) for r in result["rows"]] == [(1, "closed-loop"), (1, "paced"), (2, "paced")]
    assert result["command"].startswith("python3 -m server.client --server") and result["revision"] == "r1"
    assert BenchClient(server=bench_server.url).config().clients == 1


# ----- GPU: the render thread's stream and nvJPEG ---------------------------------------------------------------
def _gpu_jpeg_or_skip() -> None:
    try:
        import torchvision.io  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means no GPU JPEG here
        pytest.skip(f"torchvision does not import: {err}")


@pytest.mark.gpu
def test_gpu_jpeg_of_a_planar_frame_decodes_to_the_frame() -> None:
    _gpu_jpeg_or_skip()
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 18, 32, generator=torch.Generator().manual_seed(0)),
                                            size=(180, 320), mode="bilinear")[0].permute(1, 2, 0)[None]
    image = image.cuda()  # [1, H, W, 3]
    encoder = FrameEncoder()
    assert encoder.wants_planar("jpeg", image.device)
    pixels = to_uint8(image, planar=True)
    torch.cuda.synchronize()
    encoded = encoder.encode(pixels, "jpeg", 95, planar=True)
    assert encoded.encoder == "torchvision-cuda"
    decoded = np.asarray(Image.open(io.BytesIO(encoded.data)).convert("RGB"))
    assert psnr(decoded, to_uint8(image).cpu().numpy()) > 35.0
    hwc = encoder.encode(to_uint8(image), "jpeg", 95)  # HWC input: the layout copy is synchronised before nvJPEG
    assert psnr(np.asarray(Image.open(io.BytesIO(hwc.data)).convert("RGB")), decoded) > 40.0


@pytest.mark.gpu
def test_gpu_streams_send_intact_jpeg_frames_of_the_scene(served: Path) -> None:
    _gpu_jpeg_or_skip()
    from data import load_scene

    splats = load_scene(served / "rand.ply").to("cuda")
    width, height = 160, 120
    cams = [camera(eye=(0.02 * i, 0.0, -4.0), width=width, height=height) for i in range(24)]
    config = ServerConfig(scenes_dir=served, scene=served / "rand.ply", port=0, backend="torch", device="cuda",
                          limits=ServerLimits(max_streams=4, max_queued_renders=8))

    async def one_stream(url: str) -> list[tuple[int, bytes]]:
        async with connect(url + "/stream", compression=None, max_size=2**26) as ws:
            await ws.send(_config(width=width, height=height, stereo=True, ipd=0.3, format="jpeg", quality=95))
            frames = []
            for i, cam in enumerate(cams):
                await ws.send(_pose(i, cam))
                header, payload = await _frame(ws)
                assert header.pose_id == i and header.format == "jpeg"
                frames.append((i, payload))
            return frames

    async def streams(url: str) -> list[list[tuple[int, bytes]]]:
        return await asyncio.gather(one_stream(url), one_stream(url))

    with BackgroundServer(config) as running:
        results = asyncio.run(streams(running.ws_url))
    for frames in results:
        for i, payload in frames:
            assert _well_formed("jpeg", memoryview(payload))
            decoded = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
            image = render(splats, StereoRig(cams[i], 0.3), backend="torch").image
            expected = to_uint8(image).cpu().numpy()
            assert psnr(decoded, expected) > 30.0, i
