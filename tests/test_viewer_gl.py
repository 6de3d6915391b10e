"""The viewer's GL path offscreen (EGL, or GLX under Xvfb): splat renderer against the torch reference, frame
sources, stereo composition, camera controls, video export and error handling through ``AppState``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("moderngl", reason="viewer extra not installed (pip install -e '.[viewer]')")

from data import load_scene  # noqa: E402
from renderer import Camera, Splats, StereoRig, intrinsics_from_fov, look_at, render  # noqa: E402
from viewer.camera_path import CameraPath  # noqa: E402
from viewer.pipeline import FramePipeline, FrameRequest, ViewSpec  # noqa: E402
from viewer.sources import RenderSettings  # noqa: E402
from viewer.state import AppState  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "assets" / "fixtures"
PSNR_TARGET = 35.0  # the target for the GL renderer against the torch reference




def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def framed_camera(splats: Splats, width: int, height: int, yaw: float = 0.6, dist: float = 0.9,
                  K: torch.Tensor | None = None) -> Camera:
    """A camera close enough that the (central part of the) scene fills the frame."""
    means = splats.means
    center = means.median(dim=0).values
    extent = float((torch.quantile(means, 0.9, dim=0) - torch.quantile(means, 0.1, dim=0)).max())
    eye = center + dist * extent * torch.tensor([math.sin(yaw), -0.3, -math.cos(yaw)])
    k = intrinsics_from_fov(width, height, 60.0) if K is None else K
    return Camera(look_at(eye, center, (0, -1, 0)), k, width, height)


def gl_eye(ctx, splats: Splats, camera: Camera, settings: RenderSettings | None = None) -> np.ndarray:
    settings = settings or RenderSettings()
    pipeline = FramePipeline(ctx, "gl")
    try:
        pipeline.set_scene(splats)
        request = FrameRequest(ViewSpec(camera.world_to_camera), camera.width, camera.height, settings)
        # render the given camera (with its own K) straight through the source into an eye buffer
        fbo = pipeline._eyes[0].ensure(ctx, (camera.width, camera.height), "f4")
        pipeline.source.render(camera, request.settings, fbo)
        return pipeline.read_eye(0)
    finally:
        pipeline.release()


@pytest.mark.parametrize("name,sh_degree", [("guitar_2k.ply", None), ("guitar_1k_sh3.ply", 3),
                                            ("guitar_1k_sh3.ply", 2), ("guitar_1k_sh3.ply", 1),
                                            ("guitar_1k_sh3.ply", 0)])
def test_gl_matches_torch_on_fixtures(ctx, name, sh_degree):
    splats = load_scene(FIXTURES / name)
    camera = framed_camera(splats, 96, 72)
    ours = gl_eye(ctx, splats, camera, RenderSettings(sh_degree=sh_degree))
    ref = render(splats, camera, backend="torch", sh_degree=sh_degree)
    assert ref.alpha.mean() > 0.05, "the test camera should see the scene"
    assert psnr(np.clip(ours[..., :3], 0, 1), ref.image[0].clamp(0, 1).numpy()) >= PSNR_TARGET
    assert psnr(ours[..., 3:], ref.alpha[0].numpy()) >= PSNR_TARGET


@pytest.mark.parametrize("seed,sh_degree,off_centre", [(0, 0, False), (1, 1, True), (2, 2, False), (3, 3, True)])
def test_gl_matches_torch_on_random_scenes(ctx, seed, sh_degree, off_centre):
    splats = Splats.random(600, sh_degree=sh_degree, seed=seed, extent=1.0)
    k = intrinsics_from_fov(128, 96, 70.0, cx=70.0 if off_centre else None, cy=40.0 if off_centre else None)
    camera = Camera(look_at((0.4, -0.5, -2.6), (0, 0, 0), (0, -1, 0)), k, 128, 96)
    background = (0.2, 0.3, 0.4)
    ours = gl_eye(ctx, splats, camera, RenderSettings(background=background))
    ref = render(splats, camera, backend="torch", background=background)
    assert psnr(np.clip(ours[..., :3], 0, 1), ref.image[0].clamp(0, 1).numpy()) >= PSNR_TARGET


def test_depth_and_alpha_modes_match_torch(ctx):
    splats = load_scene(FIXTURES / "guitar_2k.ply")
    camera = framed_camera(splats, 96, 72)
    ref = render(splats, camera, backend="torch", render_mode="rgb+depth")
    depth_buf = gl_eye(ctx, splats, camera, RenderSettings(mode="depth"))
    alpha_buf = gl_eye(ctx, splats, camera, RenderSettings(mode="alpha"))
    hit = ref.alpha[0, ..., 0].numpy() > 0.5
    ours_depth = depth_buf[..., 0] / np.maximum(depth_buf[..., 3], 1e-10)
    rel = np.abs(ours_depth[hit] - ref.depth[0, ..., 0].numpy()[hit]) / ref.depth[0, ..., 0].numpy()[hit]
    assert hit.sum() > 50 and float(rel.max()) < 1e-3
    assert psnr(alpha_buf[..., 3], ref.alpha[0, ..., 0].numpy()) >= PSNR_TARGET


def test_torch_source_at_reduced_scale_matches_gl(ctx):
    splats = load_scene(FIXTURES / "guitar_2k.ply")
    camera = framed_camera(splats, 128, 96)
    request = FrameRequest(ViewSpec(camera.world_to_camera), 128, 96, scale=0.5)
    images = {}
    for backend in ("gl", "torch"):
        pipeline = FramePipeline(ctx, backend)
        pipeline.set_scene(splats)
        pipeline.render(request)
        images[backend] = (pipeline.read_eye(0), pipeline.read_output())
        pipeline.release()
    assert images["torch"][0].shape == (48, 64, 4)  # rendered at half resolution
    assert images["torch"][1].shape == (96, 128, 3)  # shown at full size
    assert psnr(np.clip(images["gl"][0][..., :3], 0, 1), np.clip(images["torch"][0][..., :3], 0, 1)) >= PSNR_TARGET


def _u8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.int32)


@pytest.mark.parametrize("layout", ["side-by-side", "anaglyph"])
def test_stereo_composition(ctx, layout):
    splats = load_scene(FIXTURES / "guitar_2k.ply")
    head = framed_camera(splats, 96, 72)
    width = 192 if layout == "side-by-side" else 96
    pipeline = FramePipeline(ctx, "gl")
    pipeline.set_scene(splats)
    request = FrameRequest(ViewSpec(head.world_to_camera, 60.0), width, 72, stereo=layout, ipd=0.3)
    pipeline.render(request)
    out = pipeline.read_output().astype(np.int32)
    left, right = pipeline.read_eye(0)[..., :3], pipeline.read_eye(1)[..., :3]
    pipeline.release()
    assert np.abs(_u8(left) - _u8(right)).mean() > 1.0, "the eyes should see different images"
    if layout == "side-by-side":
        expected = np.concatenate([_u8(left), _u8(right)], axis=1)
    else:
        expected = np.concatenate([_u8(left)[..., :1], _u8(right)[..., 1:]], axis=-1)
    assert np.abs(out - expected).max() <= 1
    # the left eye is the left camera of the stereo rig, as render() sees it
    rig = StereoRig(request.view.camera(96, 72), 0.3)
    ref_left = render(splats, rig.eye("left"), backend="torch").image[0].numpy()
    assert psnr(np.clip(left, 0, 1), np.clip(ref_left, 0, 1)) >= PSNR_TARGET


@pytest.fixture
def app_state(ctx):
    state = AppState()
    state.pipeline = FramePipeline(ctx, "gl")
    state.set_scene(load_scene(FIXTURES / "guitar_2k.ply"), FIXTURES / "guitar_2k.ply", "ply")
    yield state
    state.pipeline.release()
    state.close()


def _frame(state: AppState, size=(96, 72)) -> np.ndarray:
    assert state.render_if_dirty(*size)
    return state.pipeline.read_output().astype(np.float64)


def test_camera_controls_change_the_view(app_state):
    first = _frame(app_state)
    assert not app_state.render_if_dirty(96, 72), "nothing changed: no new render"
    for action in (lambda s: s.orbit(0.4, 0.0), lambda s: s.pan(0.05, 0.02), lambda s: s.dolly(2.0),
                   lambda s: s.move(1.0, 0.5, 0.0, 0.2), lambda s: s.look(0.1, 0.05)):
        before = _frame(app_state) if app_state.dirty else app_state.pipeline.read_output().astype(np.float64)
        action(app_state)
        assert app_state.dirty
        after = _frame(app_state)
        assert np.abs(after - before).mean() > 0.5
    app_state.reset_view()
    assert np.abs(_frame(app_state) - first).max() == 0


def test_settings_mark_dirty_and_render_modes(app_state):
    rgb = _frame(app_state)
    app_state.mode = "alpha"
    app_state.mark_dirty()
    alpha = _frame(app_state)
    assert np.allclose(alpha[..., 0], alpha[..., 1]) and np.abs(alpha - rgb).mean() > 1.0


def test_opening_a_bad_file_reports_in_the_ui_state(app_state, tmp_path):
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n")
    before = app_state.scene.splats
    app_state.open_scene(bad, wait=True)
    assert app_state.error is not None and "broken.ply" in app_state.error
    assert app_state.scene.splats is before
    app_state.open_scene(tmp_path / "missing.spz", wait=True)
    assert "missing.spz" in app_state.error
    assert _frame(app_state).shape == (72, 96, 3)  # still renders the previous scene
    app_state.open_scene(FIXTURES / "guitar_1k_sh3.ply", wait=True)
    assert app_state.error is None and len(app_state.scene.splats) == 1000


def test_dropped_files_open_scenes_and_paths(app_state, tmp_path):
    app_state.record_keyframe()
    app_state.orbit(0.3, 0)
    app_state.record_keyframe()
    app_state.save_path(tmp_path / "p.json")
    app_state.path = CameraPath()
    app_state.on_files_dropped([str(tmp_path / "p.json")])
    assert len(app_state.path.keyframes) == 2
    app_state.on_files_dropped([str(FIXTURES / "guitar_2k.splat")])
    app_state._pending_load[1].exception()
    app_state.poll()
    assert app_state.scene.fmt == "splat" and app_state.error is None


def test_video_export_from_the_ui_state(app_state, tmp_path):
    import imageio.v3 as iio

    app_state.record_keyframe()
    app_state.orbit(0.8, 0.1)
    app_state.record_keyframe()
    app_state.path.seconds_per_segment, app_state.path.fps = 0.5, 12
    app_state.stereo = "side-by-side"
    out = tmp_path / "ui.mp4"
    app_state.start_export(out, (128, 48))
    assert app_state.error is None and app_state.export is not None
    progress = []
    while app_state.export is not None:
        progress.append(app_state.export.progress)
        app_state.step_export()
    assert progress == sorted(progress) and progress[0] == 0.0
    frames = iio.imread(out)
    assert frames.shape == (7, 48, 128, 3)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"
