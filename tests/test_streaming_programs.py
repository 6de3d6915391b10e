"""Chunk files (``.gschunks``) under a GPU budget in ``gscache bench``, ``serve`` and ``view`` (issue 9), on the CPU
with the torch backend: images against rendering the whole scene, and clean errors for a budget below one chunk."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data import save_scene, write_chunk_file
from gscache.cli import main
from renderer import Camera, Splats, intrinsics_from_fov, look_at, render
from renderer.lod import build_chunked_scene
from renderer.streaming import StreamedScene
from server.bench import BenchConfig, run_benchmark

W, H = 32, 24
GOOD_MIB, TINY_MIB = 64.0, 0.001  # a chunk of 100 Gaussians (SH 1) is ~9 KB: 0.001 MiB cannot hold it


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Splats]:
    """``scene.gschunks`` (4 chunks of 100) and ``scene.ply`` of the same 400 Gaussians, in one folder."""
    folder = tmp_path_factory.mktemp("chunks")
    splats = Splats.random(400, sh_degree=1, seed=0)
    write_chunk_file(folder / "scene.gschunks", build_chunked_scene(splats, chunk_size=100), fsync=False)
    save_scene(folder / "scene.ply", splats)
    return folder / "scene.gschunks", folder / "scene.ply", splats


def camera() -> Camera:
    return Camera(look_at((0.0, 0.0, -4.0), (0, 0, 0), (0, -1, 0)), intrinsics_from_fov(W, H, 60.0), W, H)


# ----- bench ----------------------------------------------------------------------------------------------------
def _bench(scene_id: str, renderers: tuple[str, ...], tmp_path: Path, budget: float | None = GOOD_MIB):
    return BenchConfig(scenes=(scene_id,), paths=("orbit",), renderers=renderers, width=W, height=H,
                       warmup_frames=1, timed_frames=3, cover_path=False, device="cpu", out_dir=tmp_path,
                       plot=False, progress=False, gpu_budget_mib=budget, chunk_size=100, lod_levels=1)


def test_bench_rows_for_a_chunk_file(scene, tmp_path: Path) -> None:
    chunks, _, splats = scene
    rows = run_benchmark(_bench(str(chunks), ("torch-streaming", "torch"), tmp_path)).rows
    assert [r.renderer for r in rows] == ["torch-streaming", "torch"]
    stream = rows[0]
    assert stream.gaussians == len(splats) and stream.sh_degree == 1 and stream.frames == 3
    assert stream.reference is None and rows[1].reference == "torch-streaming"
    assert rows[1].psnr_min >= 40.0


def test_bench_streams_a_scene_id_cut_into_chunks(scene, tmp_path: Path) -> None:
    _, ply, _ = scene
    rows = run_benchmark(_bench(str(ply), ("torch", "torch-streaming", "streaming-lod"), tmp_path)).rows
    assert [r.renderer for r in rows] == ["torch", "torch-streaming", "streaming-lod"]
    assert rows[1].psnr_min >= 40.0  # level 0 only, streamed: the full render's image
    assert rows[2].psnr_min is not None


def test_bench_budget_errors(scene, tmp_path: Path) -> None:
    chunks, _, _ = scene
    with pytest.raises(ValueError, match="gpu-budget-mib"):
        _bench(str(chunks), ("torch-streaming",), tmp_path, budget=None)
    with pytest.raises(ValueError, match="smaller than the largest chunk"):
        run_benchmark(_bench(str(chunks), ("torch-streaming",), tmp_path, budget=TINY_MIB))


# ----- CLI: a budget below one chunk ends with exit 2 ----------------------------------------------------------------
def test_cli_bad_budget_exits_2(scene, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chunks, _, _ = scene
    bench = ["bench", "--scenes", str(chunks), "--renderers", "torch-streaming", "--device", "cpu", "--out-dir",
             str(tmp_path), "--no-plot", "--no-progress", "--width", "16", "--height", "16"]
    for argv in (bench + ["--gpu-budget-mib", str(TINY_MIB)], bench,
                 ["view", str(chunks), "--gpu-budget-mib", str(TINY_MIB), "--frames", "1"],
                 ["view", str(chunks), "--frames", "1"],
                 ["serve", str(chunks), "--gpu-budget-mib", str(TINY_MIB), "--port", "0"]):
        try:
            code = main(argv)
        except SystemExit as exit_:  # options checked while parsing (tyro reports them)
            code = exit_.code
        assert code == 2, argv
        err = capsys.readouterr().err
        assert "largest chunk" in err or "gpu-budget-mib" in err, err
        assert "Traceback" not in err


# ----- server -----------------------------------------------------------------------------------------------------
def test_server_renders_a_chunk_file(scene) -> None:
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from server.config import ServerConfig
    from server.runner import BackgroundServer

    chunks, ply, splats = scene
    cam = camera()
    body = {"world_to_camera": cam.world_to_camera.tolist(), "K": cam.K.tolist(), "width": W, "height": H,
            "format": "raw"}
    expected = render(splats, cam, backend="torch").image[0].clamp(0, 1).numpy()
    config = ServerConfig(scenes_dir=chunks.parent, scene=chunks, port=0, backend="torch", device="cpu",
                          gpu_budget_mib=GOOD_MIB)
    with BackgroundServer(config) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        assert http.get("/health").json()["scene"] == "scene.gschunks"
        loaded = http.get("/scenes").json()
        assert loaded["loaded"]["gaussians"] == len(splats)
        assert {"path": "scene.gschunks", "bytes": chunks.stat().st_size} in loaded["scenes"]
        response = http.post("/render", json=body)
        assert response.status_code == 200, response.text
        pixels = np.frombuffer(response.content, np.uint8).reshape(H, W, 3) / 255.0
        assert psnr(pixels, expected) >= 40.0
        # back to the .ply and to the chunk file through POST /scenes/load
        assert http.post("/scenes/load", json={"path": "scene.ply"}).status_code == 200
        assert http.post("/scenes/load", json={"path": "scene.gschunks"}).status_code == 200
        pixels = np.frombuffer(http.post("/render", json=body).content, np.uint8).reshape(H, W, 3) / 255.0
        assert psnr(pixels, expected) >= 40.0


def test_server_refuses_a_budget_below_one_chunk(scene) -> None:
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from server.config import ServerConfig
    from server.runner import BackgroundServer

    chunks, ply, _ = scene
    for budget in (TINY_MIB, None):
        config = ServerConfig(scenes_dir=chunks.parent, scene=ply, port=0, backend="torch", device="cpu",
                              gpu_budget_mib=budget)
        with BackgroundServer(config) as running, httpx.Client(base_url=running.url, timeout=60) as http:
            response = http.post("/scenes/load", json={"path": "scene.gschunks"})
            assert response.status_code == 422, response.text
            detail = response.json()["detail"]
            assert "scene.gschunks" in detail and str(chunks.parent) not in detail
            assert http.get("/health").json()["scene"] == "scene.ply"  # the current scene stays


# ----- viewer -----------------------------------------------------------------------------------------------------
def test_viewer_source_renders_a_chunk_file(scene) -> None:
    pytest.importorskip("moderngl")
    from viewer.sources import EyeGeometry, RendererSource, RenderSettings

    chunks, _, splats = scene
    source = RendererSource("torch", "cpu", upload="eyes")
    source.set_scene(StreamedScene.open(chunks, GOOD_MIB))
    cam = camera()
    out = source._render(EyeGeometry.from_cameras([cam]), RenderSettings())
    expected = render(splats, cam, backend="torch").image
    assert psnr(out.image.clamp(0, 1).numpy(), expected.clamp(0, 1).numpy()) >= 40.0


def test_viewer_pipeline_shows_a_chunk_file(ctx, scene) -> None:
    from viewer.pipeline import FramePipeline
    from viewer.sources import RenderSettings

    chunks, _, splats = scene
    cam = camera()
    pipeline = FramePipeline(ctx, "torch", upload="eyes")
    try:
        pipeline.set_scene(StreamedScene.open(chunks, GOOD_MIB))
        fbo = pipeline._eyes[0].ensure(ctx, (W, H), "f4")
        pipeline.source.render(cam, RenderSettings(), fbo)
        eye = pipeline.read_eye(0)[..., :3]
    finally:
        pipeline.release()
    expected = render(splats, cam, backend="torch").image[0].clamp(0, 1).numpy()
    assert psnr(np.clip(eye, 0, 1), expected) >= 40.0


def test_viewer_state_opens_a_chunk_file_or_keeps_its_scene(scene) -> None:
    pytest.importorskip("moderngl")
    from viewer.state import AppState

    chunks, ply, _ = scene
    state = AppState(backend="gl", gpu_budget_mib=TINY_MIB)
    state.open_scene(ply, wait=True)
    assert state.error is None and state.scene.path == ply
    state.open_scene(chunks, wait=True)
    assert "largest chunk" in state.error and state.scene.path == ply and state.backend == "gl"
    state.gpu_budget_mib = GOOD_MIB
    state.on_files_dropped([str(chunks)])
    state._pending_load[1].exception()
    state.poll()
    assert state.error is None and isinstance(state.scene.splats, StreamedScene)
    assert state.backend == ("native" if torch.cuda.is_available() else "torch")
    state.close()
