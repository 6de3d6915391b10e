"""Capture cameras that travel with a scene (``data.scene_cameras``) and where the programs start from them:
``gscache render``/``demo`` views, the viewer's default view and snapping, a training run's ``cameras.json``, the
server's ``home`` view; the bundled default scene (snowmiku, with its capture cameras)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import default_scene_path, load_scene
from data.scene_cameras import (
    SceneCamera,
    SceneCamerasError,
    camera_at_size,
    cameras_document,
    find_scene_cameras,
    load_scene_cameras,
    open_scene_cameras,
    resolve_scene_file,
)
from gscache.render_job import RenderConfig, run_render
from renderer import Camera, intrinsics_from_fov, look_at, render, scene_frame

ROOT = Path(__file__).resolve().parents[1]
GUITAR = ROOT / "assets" / "fixtures" / "guitar_2k.ply"
UP = (0.0, -1.0, 0.0)


def _ring(center, radius: float, count: int = 5, width: int = 120, height: int = 90, fov: float = 50.0):
    """``count`` upright cameras on an arc around ``center`` (y-down world), looking at it."""
    c = torch.as_tensor(center, dtype=torch.float64)
    cams = []
    for i in range(count):
        a = math.radians(-40 + 80 * i / max(count - 1, 1))
        eye = c + radius * torch.tensor([math.sin(a), -0.3, -math.cos(a)], dtype=torch.float64)
        cams.append(SceneCamera(f"img_{i:03d}.png", Camera(look_at(eye, c, UP), intrinsics_from_fov(width, height, fov),
                                                          width, height), "test" if i % 4 == 0 else "train"))
    return cams


def _inria_entries(cams):
    out = []
    for i, c in enumerate(cams):
        c2w = torch.linalg.inv(c.camera.world_to_camera)
        out.append({"id": i, "img_name": c.name, "width": c.camera.width, "height": c.camera.height,
                    "position": c2w[:3, 3].tolist(), "rotation": c2w[:3, :3].tolist(),
                    "fx": c.camera.fx, "fy": c.camera.fy})
    return out


@pytest.fixture(scope="module")
def guitar():
    splats = load_scene(GUITAR)
    center, extent = scene_frame(splats)
    return splats, center, extent


def test_gscache_and_3dgs_layouts_read_back_the_same_cameras(tmp_path, guitar):
    _, center, extent = guitar
    cams = _ring(center, 2.0 * extent)
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(cameras_document(cams)))
    inria = tmp_path / "inria.json"
    inria.write_text(json.dumps(_inria_entries(cams)))
    for path in (ours, inria):
        loaded = load_scene_cameras(path)
        assert [c.name for c in loaded.cameras] == [c.name for c in cams]
        for a, b in zip(loaded.cameras, cams, strict=True):
            assert torch.allclose(a.camera.world_to_camera, b.camera.world_to_camera, atol=1e-9)
            assert torch.allclose(a.camera.K, b.camera.K.to(torch.float64), atol=1e-9)
        assert np.allclose(loaded.up(), UP, atol=1e-9)
        assert torch.allclose(loaded.target(), torch.tensor(center, dtype=torch.float64), atol=1e-6)
    assert [c.split for c in load_scene_cameras(ours).cameras] == [c.split for c in cams]
    picked = load_scene_cameras(ours).evenly(3)
    assert [c.name for c in picked] == ["img_000.png", "img_002.png", "img_004.png"]


def test_where_cameras_are_found_and_run_folders(tmp_path, guitar):
    _, center, extent = guitar
    doc = json.dumps(cameras_document(_ring(center, 2.0 * extent)))
    beside = tmp_path / "a" / "scene_x.ply"
    beside.parent.mkdir()
    shutil.copyfile(GUITAR, beside)
    assert find_scene_cameras(beside) is None and open_scene_cameras(beside) is None
    (tmp_path / "a" / "scene_x.cameras.json").write_text(doc)
    assert find_scene_cameras(beside).name == "scene_x.cameras.json"
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="scene.ply"):
        resolve_scene_file(run)
    shutil.copyfile(GUITAR, run / "scene.ply")
    (run / "cameras.json").write_text(doc)
    assert resolve_scene_file(run) == run / "scene.ply" and len(open_scene_cameras(run / "scene.ply")) == 5
    inria = tmp_path / "inria"
    for n in (7000, 30000):
        (inria / "point_cloud" / f"iteration_{n}").mkdir(parents=True)
        shutil.copyfile(GUITAR, inria / "point_cloud" / f"iteration_{n}" / "point_cloud.ply")
    (inria / "cameras.json").write_text(json.dumps(_inria_entries(_ring(center, 2.0 * extent))))
    scene = resolve_scene_file(inria)
    assert scene.parent.name == "iteration_30000" and find_scene_cameras(scene) == inria / "cameras.json"


@pytest.mark.parametrize("text,match", [
    ("{", "not valid JSON"), ("[]", "no cameras"), ('{"views": []}', "expected a list"),
    ('{"cameras": [{"width": 4, "height": 3, "K": [[1, 0, 2], [0, 1, 1.5], [0, 0, 1]]}]}',
     r"cameras\[0\]: missing field 'world_to_camera'"),
    ('[{"img_name": "a", "width": 4, "height": 3, "position": [0, 0], "rotation": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],'
     ' "fx": 1, "fy": 1}]', r"cameras\[0\]: rotation must be 3x3 and position 3 numbers"),
])
def test_bad_cameras_files_name_the_file_and_entry(tmp_path, text, match):
    path = tmp_path / "cams.json"
    path.write_text(text)
    with pytest.raises(SceneCamerasError, match=match) as err:
        load_scene_cameras(path)
    assert "cams.json" in str(err.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_scene_cameras(tmp_path / "missing.json")


def test_camera_at_size_keeps_the_horizontal_field_of_view(guitar):
    _, center, extent = guitar
    cam = _ring(center, 2.0 * extent, width=120, height=90)[0].camera
    big = camera_at_size(cam, 480, 200)
    assert (big.width, big.height) == (480, 200)
    assert math.isclose(big.width / big.fx, cam.width / cam.fx) and math.isclose(big.fx, big.fy)
    assert math.isclose(big.K[1, 2] / 200, cam.K[1, 2] / 90)


def test_render_starts_from_the_capture_cameras(tmp_path, guitar):
    splats, center, extent = guitar
    cams = _ring(center, 2.0 * extent)
    scene = tmp_path / "guitar.ply"
    shutil.copyfile(GUITAR, scene)
    config = RenderConfig(scene=scene, out=tmp_path / "orbit", frames=3, width=64, height=48, backend="torch",
                          device="cpu", quiet=True)
    with pytest.raises(ValueError, match="no capture cameras"):
        run_render(RenderConfig(**{**config.__dict__, "path": "capture"}))
    orbit = run_render(config)  # no cameras file: the orbit
    (tmp_path / "guitar.cameras.json").write_text(json.dumps(cameras_document(cams)))
    captured = run_render(RenderConfig(**{**config.__dict__, "out": tmp_path / "capture"}))
    for i, cam in enumerate([cams[0], cams[2], cams[4]]):
        ref = render(splats, camera_at_size(cam.camera, 64, 48), backend="torch").image[0]
        ref_u8 = (ref.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        shown = np.asarray(Image.open(captured.files[i]))
        assert np.abs(shown.astype(int) - ref_u8.astype(int)).max() <= 1
    assert not np.array_equal(np.asarray(Image.open(orbit.files[0])), np.asarray(Image.open(captured.files[0])))
    forced = run_render(RenderConfig(**{**config.__dict__, "out": tmp_path / "forced", "path": "orbit"}))
    assert np.array_equal(np.asarray(Image.open(orbit.files[0])), np.asarray(Image.open(forced.files[0])))


def test_a_training_run_writes_its_dataset_cameras(tmp_path):
    from training.config import TrainConfig
    from training.trainer import dataset_cameras_document, open_dataset

    data = ROOT / "tests" / "fixtures" / "train" / "synthetic"
    dataset = open_dataset(data, TrainConfig())
    path = tmp_path / "cameras.json"
    path.write_text(json.dumps(dataset_cameras_document(dataset)))
    loaded = load_scene_cameras(path)
    assert len(loaded) == len(dataset.train) + len(dataset.test)
    by_name = {c.name: c for c in loaded.cameras}
    for frame in dataset.test:
        assert by_name[frame.name].split == "test"
        assert torch.allclose(by_name[frame.name].camera.world_to_camera, frame.camera.world_to_camera.double())


def test_the_bundled_default_scene_is_the_trained_capture_with_its_cameras():
    path = default_scene_path()
    assert path.name == "snowmiku.ply" and path.stat().st_size <= 10_000_000
    capture = open_scene_cameras(path)
    assert capture is not None and len(capture) == 97
    assert {c.split for c in capture.cameras} == {"train", "test"}
    splats = load_scene(path)
    assert splats.sh_degree == 3 and len(splats) == 38_000
    # the capture looks at the plush: most of the Gaussians lie within the cameras' distance of the target
    target = capture.target().float()
    cam_distance = float(np.median([float((-(c.camera.world_to_camera[:3, :3].T @ c.camera.world_to_camera[:3, 3]))
                                           .float().sub(target).norm()) for c in capture.cameras]))
    near = (splats.means - target).norm(dim=1) < cam_distance
    assert float(near.float().mean()) > 0.5
