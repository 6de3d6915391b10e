"""The render server (server/), tested against a real uvicorn server on a free loopback port.

Every test talks HTTP (httpx) or WebSocket (the ``websockets`` client) to a server running in a thread; images are
compared with ``renderer.render`` called directly on the same scene and pose.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import signal
import socket
import subprocess
import sys
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
simplejpeg = pytest.importorskip("simplejpeg")

from PIL import Image  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from data import load_scene, save_scene  # noqa: E402
from renderer import Camera, Splats, StereoRig, intrinsics_from_fov, look_at, render  # noqa: E402
from server.client import ClientBenchConfig, measure  # noqa: E402
from server.config import ServerConfig, ServerLimits, check_bind_policy, is_loopback  # noqa: E402
from server.frames import DirectFrameSource, FrameRequest  # noqa: E402
from server.runner import BackgroundServer  # noqa: E402
from server.scenes import LoadedScene  # noqa: E402
from server.stream import HEADER, FrameHeader  # noqa: E402

W, H = 24, 16
TOKEN = "s3cret-token-for-tests-0123456789"
EYE = (0.0, 0.0, -4.0)
REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


# ----- fixtures -------------------------------------------------------------------------------------------------
class InjectableSource(DirectFrameSource):
    """Renders like the server's default, but raises queued errors first and can be slowed down."""

    def __init__(self) -> None:
        super().__init__(backend="torch")
        object.__setattr__(self, "failures", [])
        object.__setattr__(self, "delay_s", 0.0)

    def render(self, scene: LoadedScene, request: FrameRequest) -> torch.Tensor:
        if self.failures:
            raise self.failures.pop(0)
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().render(scene, request)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``served/`` (rand.ply, sub/other.ply, bad.ply, an inside link, two escaping links) beside ``outside/``."""
    base = tmp_path_factory.mktemp("server")
    root, outside = base / "served", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    save_scene(root / "rand.ply", Splats.random(300, sh_degree=1, seed=0))
    save_scene(root / "sub" / "other.ply", Splats.random(100, sh_degree=0, seed=1))
    save_scene(outside / "secret.ply", Splats.random(10, seed=2))
    (root / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2\n")
    (root / "link_in.ply").symlink_to(root / "rand.ply")
    (root / "escape.ply").symlink_to(outside / "secret.ply")
    (root / "escdir").symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def source() -> InjectableSource:
    return InjectableSource()


@pytest.fixture(scope="module")
def server(served: Path, source: InjectableSource) -> Iterator[BackgroundServer]:
    config = ServerConfig(scenes_dir=served, scene=served / "rand.ply", port=0, backend="torch",
                          limits=ServerLimits(max_streams=3, bench_max_megapixels=50.0))
    with BackgroundServer(config, source) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def splats(served: Path) -> Splats:
    return load_scene(served / "rand.ply")


def camera(width: int = W, height: int = H, eye=EYE) -> Camera:
    return Camera(look_at(eye, (0, 0, 0), (0, -1, 0)), intrinsics_from_fov(width, height, 60.0), width, height)


def expected_pixels(splats: Splats, cameras: Camera | StereoRig) -> np.ndarray:
    """What the library renders, as the server's 8-bit side-by-side frame ``[H, C*W, 3]``."""
    image = render(splats, cameras, backend="torch").image
    pixels = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    return np.concatenate(list(pixels), axis=1)


def render_body(cam: Camera, **extra) -> dict:
    return {"world_to_camera": cam.world_to_camera.tolist(), "K": cam.K.tolist(), "width": cam.width,
            "height": cam.height, **extra}


def decode(response: httpx.Response) -> np.ndarray:
    fmt = response.headers["x-frame-format"]
    if fmt == "raw":
        shape = tuple(int(v) for v in response.headers["x-frame-shape"].split(","))
        return np.frombuffer(response.content, dtype=np.uint8).reshape(shape)
    if fmt == "png":
        return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    return simplejpeg.decode_jpeg(response.content, colorspace="RGB")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def assert_json_error(response: httpx.Response, status: int, *needles: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"error", "detail"}
    text = json.dumps(body)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text}"
    assert "Traceback" not in text
    return body


# ----- health, scenes ---------------------------------------------------------------------------------------------
def test_health_and_scene_listing(client: httpx.Client, server: BackgroundServer) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["backend"] == "torch"
    assert health["scene"] == "rand.ply"
    assert server.server.config.host == "127.0.0.1"  # loopback by default
    listing = client.get("/scenes").json()
    paths = [entry["path"] for entry in listing["scenes"]]
    assert {"rand.ply", "sub/other.ply", "link_in.ply", "bad.ply"} <= set(paths)
    assert not any(p.startswith(("escape", "escdir")) for p in paths)  # links that leave the directory
    assert listing["loaded"]["name"] == "rand.ply" and listing["loaded"]["gaussians"] == 300
    assert "served" not in json.dumps(listing)  # no absolute paths


# ----- /render ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["raw", "png", "jpeg"])
def test_render_each_format_matches_library(client: httpx.Client, splats: Splats, fmt: str) -> None:
    cam = camera()
    response = client.post("/render", json=render_body(cam, format=fmt, quality=95))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == {"raw": "application/octet-stream", "png": "image/png",
                                                "jpeg": "image/jpeg"}[fmt]
    assert float(response.headers["x-render-ms"]) > 0 and float(response.headers["x-encode-ms"]) >= 0
    assert (response.headers["x-frame-width"], response.headers["x-frame-height"]) == (str(W), str(H))
    got, want = decode(response), expected_pixels(splats, cam)
    assert got.shape == want.shape == (H, W, 3)
    assert want.max() > 0  # the scene is in view
    if fmt == "jpeg":
        assert psnr(got, want) > 30.0
    else:
        np.testing.assert_array_equal(got, want)


def test_render_stereo_is_both_eyes_side_by_side(client: httpx.Client, splats: Splats) -> None:
    cam = camera()
    response = client.post("/render", json=render_body(cam, format="raw", stereo=True, ipd=0.3))
    assert response.status_code == 200, response.text
    assert response.headers["x-frame-eyes"] == "2" and response.headers["x-frame-shape"] == f"{H},{2 * W},3"
    got = decode(response)
    np.testing.assert_array_equal(got, expected_pixels(splats, StereoRig(cam, 0.3)))
    assert not np.array_equal(got[:, :W], got[:, W:])  # the eyes differ


def test_render_opengl_pose_equals_opencv_pose(client: httpx.Client) -> None:
    cam = camera(eye=(1.0, -0.5, -3.5))
    opencv = client.post("/render", json=render_body(cam, format="raw"))
    body = render_body(cam, format="raw")
    body["c2w_opengl"] = cam.to_opengl_c2w().tolist()
    del body["world_to_camera"]
    opengl = client.post("/render", json=body)
    assert opencv.status_code == opengl.status_code == 200
    assert decode(opencv).max() > 0
    np.testing.assert_array_equal(decode(opengl), decode(opencv))


def _identity_pose(**extra) -> dict:
    return {"world_to_camera": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]], "width": W, "height": H,
            **extra}


@pytest.mark.parametrize(("content", "status", "needles"), [
    (json.dumps(_identity_pose(width=5000)), 422, ["width", "less than or equal to 4096"]),
    ('{"world_to_camera": [[1, 0', 400, ["malformed JSON"]),
    ("", 400, ["empty body"]),
    ("[1, 2, 3]", 422, ["valid dictionary"]),
    (json.dumps({"world_to_camera": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4]]}), 422,
     ["world_to_camera", "4x4", "3 rows"]),
    (json.dumps(_identity_pose(world_to_camera=[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]])), 422,
     ["world_to_camera", "not a rotation"]),
    (json.dumps(_identity_pose(world_to_camera=[[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 4],
                                                [0, 0, 0, 1]])), 422, ["world_to_camera[0][3]", "finite"]),
    (json.dumps(_identity_pose(c2w_opengl=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]])), 422,
     ["exactly one"]),
    (json.dumps(_identity_pose(fov_x_deg=200)), 422, ["fov_x_deg"]),
    (json.dumps(_identity_pose(format="bmp")), 422, ["format"]),
    (json.dumps(_identity_pose(pose="oops")), 422, ["pose", "Extra inputs"]),
    (json.dumps(_identity_pose(K=[[10, 0, 5], [0, 10, 5], [0, 1, 1]])), 422, ["K: expected [[fx, 0, cx]"]),
    ("[" * 40000 + "]" * 40000, 413, ["limit"]),
])
def test_bad_render_requests_answer_4xx_json(client: httpx.Client, content: str, status: int,
                                             needles: list[str]) -> None:
    response = client.post("/render", content=content, headers={"content-type": "application/json"})
    assert_json_error(response, status, *needles)


def test_unknown_route_and_method_are_json(client: httpx.Client) -> None:
    assert_json_error(client.get("/nope"), 404, "no route GET /nope")
    assert_json_error(client.get("/render"), 405)


def test_deeply_nested_json_is_a_400(client: httpx.Client) -> None:
    response = client.post("/render", content="[" * 5000 + "]" * 5000, headers={"content-type": "application/json"})
    assert_json_error(response, 400, "malformed JSON")


def test_bodies_must_be_declared_json(client: httpx.Client) -> None:
    body = json.dumps(render_body(camera()))
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        response = client.post("/render", content=body, headers=headers)
        assert_json_error(response, 415, "application/json")
    ok = client.post("/render", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_tokenless_loopback_server_refuses_foreign_host_and_origin(server: BackgroundServer,
                                                                   client: httpx.Client) -> None:
    assert_json_error(client.get("/health", headers={"host": "evil.example:8765"}), 403, "Host", "loopback")
    assert_json_error(client.get("/health", headers={"origin": "http://evil.example"}), 403, "Origin")
    assert client.get("/health", headers={"origin": "http://localhost:3000"}).status_code == 200

    async def close_code(origin: str) -> int:
        async with connect(server.ws_url + "/stream", origin=origin) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            return closed.value.rcvd.code

    assert asyncio.run(close_code("http://evil.example")) == 1008


def test_out_of_memory_answers_503_then_recovers(client: httpx.Client, source: InjectableSource) -> None:
    source.failures.append(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    response = client.post("/render", json=render_body(camera(), format="raw"))
    assert_json_error(response, 503, "out of memory")
    assert response.headers["retry-after"] == "1"
    assert client.post("/render", json=render_body(camera(), format="raw")).status_code == 200


def test_unexpected_error_is_a_json_500_without_internals(client: httpx.Client, source: InjectableSource) -> None:
    source.failures.append(RuntimeError("boom at /very/secret/internal/path.py"))
    response = client.post("/render", json=render_body(camera(), format="raw"))
    body = assert_json_error(response, 500, "internal error")
    assert "secret" not in json.dumps(body) and "boom" not in json.dumps(body)
    assert client.get("/health").status_code == 200


# ----- scene paths ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "status", "needle"), [
    ("../outside/secret.ply", 403, "'..'"),
    ("sub/../../outside/secret.ply", 403, "'..'"),
    ("/etc/passwd", 403, "absolute"),
    ("~/x.ply", 403, "absolute"),
    ("escape.ply", 403, "outside the served directory"),
    ("escdir/secret.ply", 403, "outside the served directory"),
    ("missing.ply", 404, "no such scene"),
    ("sub", 404, "not a file"),
    ("sub\\other.ply", 400, "relative path"),
    ("bad.ply", 422, "bad.ply"),
])
def test_scene_load_refuses_paths_outside_and_bad_files(client: httpx.Client, path: str, status: int,
                                                        needle: str) -> None:
    assert_json_error(client.post("/scenes/load", json={"path": path}), status, needle)


def test_scene_load_switches_scene(client: httpx.Client) -> None:
    try:
        response = client.post("/scenes/load", json={"path": "sub/other.ply"})
        assert response.status_code == 200, response.text
        loaded = response.json()["loaded"]
        assert loaded["name"] == "sub/other.ply" and loaded["gaussians"] == 100
        assert client.get("/health").json()["scene"] == "sub/other.ply"
        assert client.post("/scenes/load", json={"path": "link_in.ply"}).json()["loaded"]["gaussians"] == 300
    finally:
        assert client.post("/scenes/load", json={"path": "rand.ply"}).status_code == 200


# ----- /bench -----------------------------------------------------------------------------------------------------
TINY_BENCH = {"width": 16, "height": 16, "eyes": 1, "warmup_frames": 0, "timed_frames": 2, "renderers": ["torch"]}


def test_bench_runs_the_protocol_harness(client: httpx.Client) -> None:
    response = client.post("/bench", json=TINY_BENCH)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == {"command", "revision", "gpu", "date", "rows"}
    (row,) = result["rows"]
    assert row["renderer"] == "torch" and row["frames"] == 2 and row["gaussians"] == 300
    assert row["width"] == 16 and row["eyes"] == 1 and row["ms_median"] > 0 and row["path"] == "orbit"
    assert row["scene"] == "rand.ply" and result["command"].startswith("POST /bench")


@pytest.mark.parametrize(("change", "status", "needle"), [
    ({"timed_frames": 5000}, 413, "at most 1024"),
    ({"width": 4096, "height": 4096, "timed_frames": 200}, 413, "megapixels"),
    ({"renderers": ["no-such-backend"]}, 422, "no-such-backend"),
    ({"scene": "../outside/secret.ply"}, 403, "'..'"),
    ({"paths": ["spiral"]}, 422, "paths"),
    ({"warmup_frames": 1000}, 422, "warmup_frames"),
])
def test_bench_refuses_huge_or_bad_requests(client: httpx.Client, change: dict, status: int, needle: str) -> None:
    response = client.post("/bench", json=TINY_BENCH | change)
    body = assert_json_error(response, status, needle)
    assert "served" not in body["detail"]  # no absolute paths


# ----- /metrics ---------------------------------------------------------------------------------------------------
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """A strict little parser of the Prometheus text format: every line is a comment or a sample."""
    samples = {}
    for line in text.strip().splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[3] or ""))
        samples[(match[1], labels)] = float(match[4])
    return samples


def test_metrics_parse_and_count(client: httpx.Client) -> None:
    def value(samples, name, **labels) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    first = client.get("/metrics")
    assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
    before = parse_metrics(first.text)
    assert client.post("/render", json=render_body(camera(), format="jpeg")).status_code == 200
    client.get("/nope")
    after = parse_metrics(client.get("/metrics").text)
    assert value(after, "gscache_frames_rendered_total", source="http") == \
        value(before, "gscache_frames_rendered_total", source="http") + 1
    assert value(after, "gscache_requests_total", route="/render", method="POST", status="200") == \
        value(before, "gscache_requests_total", route="/render", method="POST", status="200") + 1
    assert value(after, "gscache_requests_total", route="other", method="GET", status="404") >= 1
    assert value(after, "gscache_render_seconds_count") == value(before, "gscache_render_seconds_count") + 1
    assert value(after, "gscache_request_duration_seconds_bucket", route="/render", le="+Inf") >= 1
    assert value(after, "gscache_encode_seconds_count", format="jpeg") >= 1
    assert value(after, "gscache_scene_gaussians") == 300
    assert ("gscache_active_streams", frozenset()) in after


# ----- /stream ----------------------------------------------------------------------------------------------------
def _pose(pose_id: int, cam: Camera) -> str:
    return json.dumps({"type": "pose", "id": pose_id, "world_to_camera": cam.world_to_camera.tolist()})


def _config(**view) -> str:
    return json.dumps({"type": "config", "width": W, "height": H, "fov_x_deg": 60.0, "format": "raw", **view})


async def _frame(ws) -> tuple[FrameHeader, bytes]:
    message = await asyncio.wait_for(ws.recv(), 60)
    assert isinstance(message, bytes), message
    return FrameHeader.unpack(message), message[HEADER.size:]


def test_stream_sends_frames_with_correct_headers(server: BackgroundServer, splats: Splats) -> None:
    cam = camera()

    async def run() -> None:
        async with connect(server.ws_url + "/stream") as ws:
            await ws.send(_config())
            for expected_frame, pose_id in enumerate((7, -3)):
                await ws.send(_pose(pose_id, cam))
                header, payload = await _frame(ws)
                assert (header.frame_id, header.pose_id) == (expected_frame, pose_id)
                assert (header.width, header.height, header.eyes, header.format) == (W, H, 1, "raw")
                assert header.payload_bytes == len(payload) == H * W * 3
                assert header.render_ms > 0 and header.encode_ms >= 0
                assert abs(header.server_time - time.time()) < 30
                pixels = np.frombuffer(payload, dtype=np.uint8).reshape(H, W, 3)
                np.testing.assert_array_equal(pixels, expected_pixels(splats, cam))
            await ws.send(_config(stereo=True, format="png"))
            await ws.send(_pose(8, cam))
            header, payload = await _frame(ws)
            assert (header.eyes, header.format, header.pose_id) == (2, "png", 8)
            assert np.asarray(Image.open(io.BytesIO(payload))).shape == (H, 2 * W, 3)

    asyncio.run(run())


def test_stream_renders_only_the_newest_pose_when_flooded(server: BackgroundServer, client: httpx.Client,
                                                          source: InjectableSource) -> None:
    cams = [camera(eye=(0.1 * i, 0.0, -4.0)) for i in range(60)]
    dropped_before = parse_metrics(client.get("/metrics").text).get(
        ("gscache_stream_poses_total", frozenset({("outcome", "dropped")})), 0.0)

    async def run() -> list[int]:
        async with connect(server.ws_url + "/stream") as ws:
            await ws.send(_config())
            for i, cam in enumerate(cams):
                await ws.send(_pose(i, cam))
            answered = []
            while not answered or answered[-1] != len(cams) - 1:
                header, _ = await _frame(ws)
                answered.append(header.pose_id)
            return answered

    object.__setattr__(source, "delay_s", 0.05)  # slower than the client sends, on any machine
    try:
        answered = asyncio.run(run())
    finally:
        object.__setattr__(source, "delay_s", 0.0)
    assert len(answered) < len(cams)  # stale poses were dropped
    assert answered[-1] == len(cams) - 1  # the newest pose is answered
    assert answered == sorted(set(answered))  # never an older pose after a newer one
    dropped_after = parse_metrics(client.get("/metrics").text)[
        ("gscache_stream_poses_total", frozenset({("outcome", "dropped")}))]
    assert dropped_after - dropped_before >= len(cams) - len(answered)


def test_stream_reports_bad_messages_and_keeps_going(server: BackgroundServer, source: InjectableSource) -> None:
    cam = camera()

    async def run() -> None:
        async with connect(server.ws_url + "/stream") as ws:
            await ws.send(_config())
            await ws.send("{not json")
            assert "malformed JSON" in json.loads(await ws.recv())["detail"]
            await ws.send(b"\x00\x01")
            assert "binary" in json.loads(await ws.recv())["detail"]
            await ws.send(json.dumps({"type": "pose", "id": 1, "world_to_camera": [[1, 0], [0, 1]]}))
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and "4x4" in json.dumps(error["problems"])
            await ws.send(json.dumps({"type": "pose", "id": 2,
                                      "world_to_camera": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 4], [0, 0, 0, 1]]}))
            error = json.loads(await ws.recv())
            assert error["pose_id"] == 2 and "not a rotation" in error["detail"]
            await ws.send(json.dumps({"type": "config", "width": 99999}))
            assert "width" in json.dumps(json.loads(await ws.recv())["problems"])
            source.failures.append(torch.OutOfMemoryError("CUDA out of memory"))
            await ws.send(_pose(3, cam))
            error = json.loads(await ws.recv())
            assert (error["status"], error["pose_id"]) == (503, 3) and "out of GPU memory" in error["detail"]
            await ws.send(_pose(4, cam))
            header, _ = await _frame(ws)
            assert header.pose_id == 4

    asyncio.run(run())


def test_stream_limits_message_size_and_stream_count(server: BackgroundServer) -> None:
    async def oversized() -> int:
        async with connect(server.ws_url + "/stream", max_size=None) as ws:
            await ws.send("x" * (server.state.config.limits.max_message_bytes + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            return closed.value.rcvd.code

    async def too_many() -> int:
        while server.state.streams.sessions:  # streams of earlier tests are still closing
            await asyncio.sleep(0.02)
        opened = [await connect(server.ws_url + "/stream") for _ in range(server.state.config.limits.max_streams)]
        try:
            async with connect(server.ws_url + "/stream") as extra:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(extra.recv(), 30)
                return closed.value.rcvd.code
        finally:
            for ws in opened:
                await ws.close()

    assert asyncio.run(oversized()) == 1009
    assert asyncio.run(too_many()) == 1013


# ----- the motion-to-photon client (gscache bench --server) -----------------------------------------------------
def test_bench_client_measures_motion_to_photon(server: BackgroundServer) -> None:
    config = ClientBenchConfig(server.url, poses=3, warmup=1, width=16, height=16, stereo=False, path="orbit")
    result = asyncio.run(measure(config))
    assert (result.mode, result.poses_sent, result.frames_received, result.poses_dropped) == ("closed-loop", 3, 3, 0)
    lat = result.motion_to_photon
    assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
    assert lat.median_ms >= result.server_render_ms_median  # a frame cannot arrive before it was rendered
    json.dumps(result.to_json())
    paced = asyncio.run(measure(ClientBenchConfig(server.url, poses=12, warmup=0, width=16, height=16,
                                                  stereo=False, rate_hz=400.0)))
    assert paced.mode == "paced" and 1 <= paced.frames_received <= 12
    assert paced.frames_received + paced.poses_dropped == 12


# ----- token, bind policy -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_server(served: Path) -> Iterator[BackgroundServer]:
    config = ServerConfig(scenes_dir=served, scene=served / "sub" / "other.ply", port=0, backend="torch",
                          token=TOKEN)
    with BackgroundServer(config) as running:
        yield running


@pytest.mark.parametrize("route", ["/health", "/scenes", "/metrics", "/nope"])
def test_token_is_required_on_every_http_route(token_server: BackgroundServer, route: str) -> None:
    with httpx.Client(base_url=token_server.url) as http:
        missing = http.get(route)
        assert_json_error(missing, 401, "requires a token")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_json_error(http.get(route, headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"}), 401, "wrong")
        assert_json_error(http.get(route, params={"token": TOKEN}), 401)  # query tokens: WebSocket only
        ok = http.get(route, headers={"Authorization": "Bearer " + TOKEN})
        assert ok.status_code == (404 if route == "/nope" else 200)


def test_token_is_required_on_render_and_stream(token_server: BackgroundServer) -> None:
    cam = camera()
    with httpx.Client(base_url=token_server.url, timeout=60) as http:
        assert_json_error(http.post("/render", json=render_body(cam)), 401)
        ok = http.post("/render", json=render_body(cam), headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200

    async def refused(url: str) -> int:
        async with connect(url) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            return closed.value.rcvd.code

    async def served_frame(url: str, **kwargs) -> int:
        async with connect(url, **kwargs) as ws:
            await ws.send(_config())
            await ws.send(_pose(5, cam))
            header, _ = await _frame(ws)
            return header.pose_id

    base = token_server.ws_url + "/stream"
    assert asyncio.run(refused(base)) == 1008
    assert asyncio.run(refused(base + "?token=wrong-token-xxxxxxxxxxxx")) == 1008
    assert asyncio.run(served_frame(base + "?token=" + TOKEN)) == 5
    assert asyncio.run(served_frame(base, additional_headers={"Authorization": f"Bearer {TOKEN}"})) == 5


def test_bind_policy_loopback_default_and_token() -> None:
    assert ServerConfig(scenes_dir=Path(".")).host == "127.0.0.1"
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com", ""))
    assert check_bind_policy("127.0.0.1", None, False) is False
    assert check_bind_policy("0.0.0.0", TOKEN, False) is False
    with pytest.raises(ValueError, match="not a loopback address.*--token"):
        check_bind_policy("0.0.0.0", None, False)
    assert check_bind_policy("0.0.0.0", None, True) is True  # allowed, and the caller logs it loudly
    with pytest.raises(ValueError, match="at least 16 characters"):
        ServerConfig(scenes_dir=Path("."), token="short")


def test_cli_serve_refuses_non_loopback_without_token(served: Path, capsys: pytest.CaptureFixture) -> None:
    from gscache.cli import main

    code = main(["serve", str(served / "rand.ply"), "--host", "0.0.0.0", "--port", "0"])
    assert code == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_cli_serve_runs_and_stops_gracefully_on_sigint(served: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "gscache", "serve", str(served / "rand.ply"), "--port", str(port), "--backend",
               "torch", "--device", "cpu", "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "gscache serve did not come up"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health.json()["scene"] == "rand.ply"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err  # gscache's exit code for an interrupt, after a graceful shutdown
    assert f"http://127.0.0.1:{port}" in out and "Traceback" not in err


# ----- graceful shutdown ------------------------------------------------------------------------------------------
def test_graceful_shutdown_finishes_inflight_work(served: Path) -> None:
    source = InjectableSource()
    config = ServerConfig(scenes_dir=served, scene=served / "rand.ply", port=0, backend="torch",
                          shutdown_grace_s=20.0)
    running = BackgroundServer(config, source).start()
    object.__setattr__(source, "delay_s", 0.5)
    results: dict[str, object] = {}

    def http_render() -> None:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            results["http"] = http.post("/render", json=render_body(camera(), format="raw"))

    async def stream() -> None:
        async with connect(running.ws_url + "/stream") as ws:
            await ws.send(_config())
            await ws.send(_pose(11, camera()))
            while running.state.worker.queued < 2:  # the HTTP render and this pose are both queued
                await asyncio.sleep(0.01)
            results["stopping"] = threading.Thread(target=running.stop)
            results["stopping"].start()
            header, _ = await _frame(ws)  # the frame in flight still arrives
            results["stream_pose"] = header.pose_id
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            results["close"] = (closed.value.rcvd.code, closed.value.rcvd.reason)

    requester = threading.Thread(target=http_render)
    requester.start()
    while running.state.inflight < 1:
        time.sleep(0.01)
    asyncio.run(stream())
    requester.join(60)
    results["stopping"].join(60)
    response = results["http"]
    assert isinstance(response, httpx.Response) and response.status_code == 200
    assert results["stream_pose"] == 11
    assert results["close"] == (1001, "server shutting down")
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url + "/health", timeout=5)


# ----- frame sources: the frame cache and the multi-GPU scheduler -------------------------------------------------
def _scene(splats: Splats, path: Path, version: int = 1) -> LoadedScene:
    from renderer import scene_frame

    center, extent = scene_frame(splats)
    return LoadedScene(name=path.name, path=path, splats=splats, center=tuple(center), extent=extent,
                       version=version)


def _pixels(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def test_cached_source_matches_direct_render_on_a_head_path(served: Path, splats: Splats) -> None:
    from renderer.paths import PathSpec, head_path
    from server.sources import CachedFrameSource

    scene = _scene(splats, served / "rand.ply")
    cached, direct = CachedFrameSource(backend="torch"), DirectFrameSource(backend="torch")
    spec = PathSpec(center=scene.center, extent=scene.extent, width=W, height=H)
    with torch.inference_mode():
        for i, rig in enumerate(head_path(spec, frames=12)):
            request = FrameRequest(rig, (0.1, 0.2, 0.3), session="s")
            got, want = _pixels(cached.render(scene, request)), _pixels(direct.render(scene, request))
            if i == 0:
                np.testing.assert_allclose(got.astype(int), want.astype(int), atol=1)
            assert psnr(got, want) >= 40.0, f"frame {i}: {psnr(got, want):.1f} dB"
    counts = cached.counter.values
    assert counts[("shading", "hit")] > 0 and counts[("visible", "refresh")] >= 1
    assert sum(v for (stage, _), v in counts.items() if stage == "shading") == 12


def test_cached_source_keeps_a_cache_per_session_and_drops_old_scenes(served: Path, splats: Splats) -> None:
    from server.sources import CachedFrameSource

    cached = CachedFrameSource(backend="torch", max_caches=3)
    first, second = _scene(splats, served / "rand.ply", 1), _scene(splats, served / "rand.ply", 2)
    with torch.inference_mode():
        for session in ("a", "b", None):
            cached.render(first, FrameRequest(camera(), session=session))
        assert cached.cache_for(first, "a") is not cached.cache_for(first, "b")
        assert set(cached.cache_keys) == {(1, "a"), (1, "b"), (1, None)}
        cached.forget_session("a")
        assert set(cached.cache_keys) == {(1, "b"), (1, None)}
        cached.render(second, FrameRequest(camera(), session="b"))  # a reload: version 2
        assert cached.cache_keys == [(2, "b")]
        for session in ("c", "d", "e"):  # bounded: least recently used first out
            cached.render(second, FrameRequest(camera(), session=session))
        assert cached.cache_keys == [(2, "c"), (2, "d"), (2, "e")]


def test_scheduled_source_with_two_cpu_workers_renders_as_direct(served: Path, splats: Splats) -> None:
    from server.sources import ScheduledFrameSource, parse_devices

    assert parse_devices("0,1", torch.device("cuda")) == ["cuda:0", "cuda:1"]
    assert parse_devices("2", torch.device("cpu")) == ["cpu", "cpu"]
    source = ScheduledFrameSource(["cpu", "cpu"], backend="torch")
    assert source.transport == "thread"
    scene = _scene(splats, served / "rand.ply")
    direct = DirectFrameSource(backend="torch")
    try:
        for background in ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)):  # mono: the same image as a direct render
            request = FrameRequest(camera(), background)
            got, want = source.render(scene, request), direct.render(scene, request)
            assert got.shape == want.shape == (1, H, W, 3) and got.device == want.device
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        request = FrameRequest(StereoRig(camera(), 0.1))  # stereo: colours shaded once from the head (the cache)
        got, want = source.render(scene, request), direct.render(scene, request)
        assert got.shape == (2, H, W, 3) and psnr(_pixels(got), _pixels(want)) >= 40.0
        assert sum(w.frames for w in source.scheduler.workers()) == 3
        first = source.scheduler
        source.render(_scene(splats, served / "rand.ply", 2), FrameRequest(camera()))  # new version: new workers
        assert source.scheduler is not first and first._closed
    finally:
        source.close()


def test_real_server_with_the_frame_cache_answers_render_and_stream(served: Path, splats: Splats) -> None:
    config = ServerConfig(scenes_dir=served, scene=served / "rand.ply", port=0, backend="torch", cache=True)
    cam = camera()
    with BackgroundServer(config) as running:
        assert running.state.source_name.startswith("frame cache")
        with httpx.Client(base_url=running.url, timeout=60) as http:
            response = http.post("/render", json=render_body(cam, format="raw"))
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(decode(response).astype(int), expected_pixels(splats, cam).astype(int),
                                       atol=1)

            async def run() -> None:
                async with connect(running.ws_url + "/stream") as ws:
                    await ws.send(_config())
                    for pose_id in (1, 2):
                        await ws.send(_pose(pose_id, cam))
                        header, payload = await _frame(ws)
                        assert header.pose_id == pose_id
                        pixels = np.frombuffer(payload, dtype=np.uint8).reshape(H, W, 3)
                        assert psnr(pixels, expected_pixels(splats, cam)) >= 40.0

            asyncio.run(run())
            metrics = http.get("/metrics").text
        assert 'gscache_frame_cache_total{stage="shading",outcome="hit"}' in metrics
    uncached = ServerConfig(scenes_dir=served, scene=served / "rand.ply", port=0, backend="torch", cache=False)
    with BackgroundServer(uncached) as running:
        assert running.state.source_name == "direct (no cache)"
