"""The viewer's ``remote`` frame source against a real render server (uvicorn in a thread, loopback, CPU torch).

The frames go through the viewer's own offscreen pipeline (``AppState.render_if_dirty`` in a standalone GL
context) and are compared with ``renderer.render`` called directly on the same cameras: exact for raw and PNG,
>= 30 dB for JPEG. One test runs the real window under a private Xvfb with ``--remote``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("moderngl", reason="viewer extra not installed (pip install -e '.[viewer]')")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
pytest.importorskip("simplejpeg")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from data import load_scene  # noqa: E402
from gscache.cli import main  # noqa: E402
from renderer import Camera, Splats, render  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.runner import BackgroundServer  # noqa: E402
from server.stream import FrameHeader  # noqa: E402
from viewer.pipeline import FramePipeline  # noqa: E402
from viewer.remote import RemoteSource, RemoteSpec, StreamHeader  # noqa: E402
from viewer.state import AppState  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "assets" / "fixtures"
GUITAR = FIXTURES / "guitar_2k.ply"
TOKEN = "remote-viewer-token-0123456789"
W, H = 64, 48
JPEG_PSNR = 30.0
pytestmark = pytest.mark.timeout(120)


# ----- fixtures -------------------------------------------------------------------------------------------------


def server_config(**changes) -> ServerConfig:
    base = ServerConfig(scenes_dir=FIXTURES, scene=GUITAR, port=0, backend="torch", device="cpu",
                        shutdown_grace_s=2.0)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(server_config()) as running:
        yield running


@pytest.fixture(scope="module")
def splats() -> Splats:
    return load_scene(GUITAR)


@pytest.fixture
def make_state(ctx) -> Iterator[Callable[[RemoteSpec], AppState]]:
    """AppStates streaming from a server through the offscreen pipeline; their connections closed afterwards."""
    made: list[AppState] = []

    def make(spec: RemoteSpec) -> AppState:
        state = AppState(backend="remote", remote=spec)
        state.pipeline = FramePipeline(ctx, "remote", remote=spec)
        made.append(state)
        return state

    yield make
    for state in made:
        state.pipeline.release()
        state.close()


def source_of(state: AppState) -> RemoteSource:
    source = state.remote_source
    assert source is not None
    return source


def pump(state: AppState, until: Callable[[], bool], size: tuple[int, int] = (W, H), timeout_s: float = 20.0) -> None:
    """Run the UI loop's per-frame work (poll + render when dirty) until ``until()``, as the window does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state.poll()
        state.render_if_dirty(*size)
        if until():
            return
        time.sleep(0.005)
    source = state.remote_source
    raise AssertionError(f"timed out; status {source.status_line() if source else None}, error {state.error}")


def fresh(state: AppState) -> Callable[[], bool]:
    """The frame on show answers the newest pose, and the camera frames the server's scene."""
    return lambda: state._remote_scene_key is not None and source_of(state).up_to_date


def reference(splats: Splats, cameras: list[Camera]) -> np.ndarray:
    """``renderer.render`` of each eye, 8-bit, side by side (what the viewer's output shows for mono/side-by-side)."""
    images = [render(splats, cam, backend="torch").image[0] for cam in cameras]
    return np.concatenate([(im.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy() for im in images], axis=1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# ----- protocol and frames --------------------------------------------------------------------------------------
def test_header_parser_agrees_with_the_server() -> None:
    header = FrameHeader(7, 5, -3, 1234.5, 2.5, 0.75, 640, 480, "png", 2)
    ours = StreamHeader.unpack(header.pack() + b"12345")
    assert dataclasses.asdict(ours) == dataclasses.asdict(header)
    with pytest.raises(ValueError, match="gscache"):
        StreamHeader.unpack(b"XXXX" + header.pack()[4:])


@pytest.mark.parametrize("fmt,stereo", [("raw", "mono"), ("png", "side-by-side"), ("jpeg", "mono")])
def test_remote_frames_match_a_direct_render(server, splats, make_state, fmt: str, stereo: str) -> None:
    state = make_state(RemoteSpec(server.ws_url, format=fmt))
    state.stereo = stereo
    width = 2 * W if stereo == "side-by-side" else W
    pump(state, fresh(state), (width, H))
    source = source_of(state)
    assert source.client.status.state == "connected" and state.remote_status[0] == "ok"
    assert source.client.frames_received == 1, "the first pose sent should already frame the server's scene"
    frame = source.client.latest()
    assert (frame.header.format, frame.header.eyes, frame.header.height) == (fmt, 1 + (stereo != "mono"), H)
    ours = state.pipeline.read_output()
    ref = reference(splats, state.frame_request(width, H).eye_cameras())
    assert ref.mean() > 2, "the framed camera should see the scene"
    assert ours.shape == ref.shape == (H, width, 3)
    if fmt == "jpeg":
        assert psnr(ours, ref) >= JPEG_PSNR
    else:
        np.testing.assert_array_equal(ours, ref)
    # a camera move sends a new pose; its frame replaces the old one
    state.orbit(0.4, 0.1)
    pump(state, fresh(state), (width, H))
    moved = reference(splats, state.frame_request(width, H).eye_cameras())
    assert psnr(state.pipeline.read_output(), moved) >= (JPEG_PSNR if fmt == "jpeg" else math.inf)


def test_too_large_resolution_is_refused_in_the_ui_not_a_crash(server, make_state) -> None:
    state = make_state(RemoteSpec(server.ws_url, format="raw"))
    source = source_of(state)
    pump(state, lambda: source.refusal is not None, size=(5000, 32))
    level, text = source.status_line()
    assert level == "bad" and "4096" in text and "5000x32" in text
    assert source.client.wanted_pose_id == 0, "nothing may be sent for a refused size"
    assert state.error is None
    pump(state, fresh(state))  # a size within the bound streams again
    assert source.refusal is None and source.status_line()[0] == "ok"


# ----- losing the server ----------------------------------------------------------------------------------------
def test_lost_server_shows_status_keeps_running_and_reconnects(splats, make_state) -> None:
    first = BackgroundServer(server_config()).start()
    port = int(first.url.rsplit(":", 1)[1])
    try:
        state = make_state(RemoteSpec(first.ws_url, format="raw", backoff_s=(0.1, 0.4)))
        source = source_of(state)
        pump(state, fresh(state))
    finally:
        first.stop()
    pump(state, lambda: source.client.status.state == "reconnecting")
    lost = source.status_line()[1]
    assert lost.startswith("lost: ") and "reconnecting in" in lost, lost
    # the viewer keeps working without its server: camera moves render (the last frame) and nothing raises
    for _ in range(5):
        state.orbit(0.05, 0.0)
        state.poll()
        assert state.render_if_dirty(W, H)
    pump(state, lambda: "connection refused" in source.status_line()[1])
    assert state.error is None
    second = BackgroundServer(server_config(port=port)).start()
    try:
        pump(state, fresh(state), timeout_s=30)
        assert source.client.status.state == "connected"
        np.testing.assert_array_equal(state.pipeline.read_output(),
                                      reference(splats, state.frame_request(W, H).eye_cameras()))
    finally:
        second.stop()


def test_wrong_or_missing_token_is_a_clear_status(make_state) -> None:
    with BackgroundServer(server_config(token=TOKEN)) as running:
        wrong = make_state(RemoteSpec(running.ws_url, token="not-the-token-at-all-0000"))
        missing = make_state(RemoteSpec(running.ws_url))
        right = make_state(RemoteSpec(running.ws_url, token=TOKEN, format="png"))
        for state, needle in ((wrong, "wrong token"), (missing, "requires a token")):
            source = source_of(state)
            pump(state, lambda s=source: s.client.status.state == "refused")
            level, text = source.status_line()
            assert level == "bad" and needle in text and "--token" in text, text
            assert TOKEN not in text
        pump(right, fresh(right))
        client = source_of(right).client
        assert client.status.state == "connected"
        client.reconnect()  # the panel's "Reconnect now": a new connection, without a backoff wait
        pump(right, lambda: client.connection()[0] == 2 and client.status.state == "connected", timeout_s=10)
        right.orbit(0.2, 0.0)
        pump(right, fresh(right))


def test_view_cli_checks_remote_arguments(capsys) -> None:
    assert main(["view", str(GUITAR), "--remote", "ws://127.0.0.1:1"]) == 2
    assert "--remote" in capsys.readouterr().err
    assert main(["view", "--remote", "http://127.0.0.1:1"]) == 2
    assert "ws://" in capsys.readouterr().err
    assert main(["view", "--token", TOKEN]) == 2
    assert "--remote" in capsys.readouterr().err


# ----- the real window --------------------------------------------------------------------------------------------
def test_window_streams_from_the_server(xvfb_display, server, splats, tmp_path) -> None:
    shot = tmp_path / "remote.png"
    env = dict(os.environ, DISPLAY=xvfb_display, PYTHONPATH=str(ROOT))
    env.pop("GSCACHE_SERVER_TOKEN", None)
    proc = subprocess.run([sys.executable, "-m", "gscache", "view", "--remote", server.ws_url, "--width", "160",
                           "--height", "120", "--frames", "4", "--screenshot", str(shot)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    loaded = httpx.get(server.url + "/scenes").json()["loaded"]
    state = AppState()
    state._frame_remote_scene(loaded)  # the framing the viewer applied from the same answer
    ref = reference(splats, state.frame_request(160, 120).eye_cameras())
    assert pixels.shape == ref.shape and ref.mean() > 2
    assert psnr(pixels, ref) >= JPEG_PSNR
