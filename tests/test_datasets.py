"""Dataset readers (COLMAP text/binary, camera models, transforms.json layouts), split, downscale, initialisation."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pycolmap")
pytest.importorskip("open3d")

from data import DatasetError, DatasetOptions, load_dataset  # noqa: E402
from data.dataset import Frame, split_frames  # noqa: E402
from data.images import read_image_rgb  # noqa: E402
from data.init_points import PointCloud, knn_mean_sq_dist, remove_outliers, splats_from_points  # noqa: E402
from renderer import Camera, intrinsics_from_fov, look_at  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures" / "train"
NO_SPLIT = DatasetOptions(test_every=0)


def _copy(name: str, tmp_path: Path, binary: bool = False) -> Path:
    """Copy a fixture dataset into ``tmp_path``; with ``binary`` the COLMAP model is the .bin one."""
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    if binary:
        shutil.rmtree(dst / "sparse" / "0")
        shutil.copytree(FIX / name / "sparse_bin" / "0", dst / "sparse" / "0")
    shutil.rmtree(dst / "sparse_bin", ignore_errors=True)
    return dst


def _set_camera(root: Path, line: str) -> None:
    (root / "sparse" / "0" / "cameras.txt").write_text(line + "\n")


def _truth() -> dict:
    return torch.load(FIX / "synthetic" / "truth.pt", weights_only=True)


# ----- COLMAP ---------------------------------------------------------------------------------------------------
def test_colmap_text_and_binary_equal(tmp_path):
    text = load_dataset(_copy("synthetic", tmp_path / "t"), NO_SPLIT)
    binary = load_dataset(_copy("synthetic", tmp_path / "b", binary=True), NO_SPLIT)
    assert [f.name for f in text.train] == [f.name for f in binary.train]
    for a, b in zip(text.train, binary.train):
        assert torch.allclose(a.camera.world_to_camera, b.camera.world_to_camera, atol=1e-9)
        assert torch.allclose(a.camera.K, b.camera.K) and (a.camera.width, a.camera.height) == (32, 24)
    assert torch.equal(text.points.xyz, binary.points.xyz) and torch.equal(text.points.rgb, binary.points.rgb)


def test_colmap_poses_and_images_match_the_rendered_truth():
    ds = load_dataset(FIX / "synthetic", NO_SPLIT)
    truth = _truth()
    assert len(ds.train) == 10 and ds.kind == "colmap" and len(ds.points) == 400
    for i, frame in enumerate(ds.train):
        assert frame.name == f"view_{i:02d}.png" and frame.source is None
        assert torch.allclose(frame.camera.world_to_camera, truth["w2c"][i], atol=1e-6)
        assert torch.allclose(frame.camera.K, truth["K"], atol=1e-6)
    image = ds.image(ds.train[0])
    assert image.shape == (24, 32, 3) and image.dtype == torch.float32
    assert ds.image(ds.train[0]) is image  # cached
    assert len(ds.images) == 1


@pytest.mark.parametrize("line, fx, fy", [
    ("1 SIMPLE_PINHOLE 32 24 27.7 16 12", 27.7, 27.7),
    ("1 PINHOLE 32 24 27.7 28.1 16.5 11.5", 27.7, 28.1),
])
def test_colmap_pinhole_models(tmp_path, line, fx, fy):
    root = _copy("synthetic", tmp_path)
    _set_camera(root, line)
    frame = load_dataset(root, NO_SPLIT).train[0]
    assert frame.source is None and (frame.camera.fx, frame.camera.fy) == (fx, fy)


@pytest.mark.parametrize("line", [
    "1 SIMPLE_RADIAL 32 24 27.7 16 12 0.05",
    "1 RADIAL 32 24 27.7 16 12 0.05 -0.01",
    "1 OPENCV 32 24 27.7 28.1 16 12 0.05 -0.01 0.001 0.002",
])
def test_colmap_distorted_models_are_undistorted_like_colmap(tmp_path, line):
    import pycolmap

    root = _copy("synthetic", tmp_path)
    _set_camera(root, line)
    frame = load_dataset(root, NO_SPLIT).train[0]
    assert frame.source is not None and frame.source.model == line.split()[1]
    ours = load_dataset(root, NO_SPLIT).image(frame).numpy()
    ref = _colmap_undistort(frame, pycolmap)
    assert ours.shape == ref.shape == (frame.camera.height, frame.camera.width, 3)
    assert np.abs(ours - ref).mean() < 1.5 / 255


def _colmap_undistort(frame: Frame, pycolmap) -> np.ndarray:
    src = frame.source
    cam = pycolmap.Camera(model=src.model, width=src.width, height=src.height, params=list(src.params))
    raw = (read_image_rgb(frame.image_path, (0.0, 0.0, 0.0)).numpy() * 255 + 0.5).astype(np.uint8)
    out, ucam = pycolmap.undistort_image(pycolmap.UndistortCameraOptions(), pycolmap.Bitmap.from_array(raw), cam)
    assert np.allclose(np.asarray(ucam.calibration_matrix()), frame.camera.K.numpy())
    return out.to_array().astype(np.float32) / 255.0


def test_real_snowmiku_crop_text_binary_and_undistortion(tmp_path):
    import pycolmap

    text = load_dataset(_copy("snowmiku_crop", tmp_path / "t"), NO_SPLIT)
    binary = load_dataset(_copy("snowmiku_crop", tmp_path / "b", binary=True), NO_SPLIT)
    assert len(text.train) == 4 and len(text.points) == 300
    frame = text.train[0]
    assert frame.source.model == "SIMPLE_RADIAL" and (frame.camera.width, frame.camera.height) == (60, 45)
    assert torch.allclose(frame.camera.world_to_camera, binary.train[0].camera.world_to_camera, atol=1e-9)
    ref = _colmap_undistort(frame, pycolmap)
    assert np.abs(text.image(frame).numpy() - ref).mean() < 1.5 / 255


def test_unsupported_camera_model_is_named(tmp_path):
    root = _copy("synthetic", tmp_path)
    _set_camera(root, "1 FOV 32 24 27.7 27.7 16 12 0.1")
    with pytest.raises(DatasetError, match="unsupported camera model FOV"):
        load_dataset(root)


def test_missing_image_is_named(tmp_path):
    root = _copy("synthetic", tmp_path)
    (root / "images" / "view_03.png").unlink()
    with pytest.raises(DatasetError, match=r"view_03\.png: image file missing"):
        load_dataset(root)


def test_empty_and_incomplete_models(tmp_path):
    root = _copy("synthetic", tmp_path)
    (root / "sparse" / "0" / "images.txt").write_text("# no images\n")
    with pytest.raises(DatasetError, match="empty COLMAP model"):
        load_dataset(root)
    (root / "sparse" / "0" / "points3D.txt").unlink()
    with pytest.raises(DatasetError, match="points3D.bin or points3D.txt missing"):
        load_dataset(root)
    with pytest.raises(DatasetError, match="no dataset found"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_dataset(tmp_path / "nowhere")


def test_downscale(tmp_path):
    full = load_dataset(FIX / "synthetic", NO_SPLIT)
    half = load_dataset(FIX / "synthetic", DatasetOptions(downscale=2, test_every=0))
    cam = half.train[0].camera
    assert (cam.width, cam.height) == (16, 12)
    assert math.isclose(cam.fx, full.train[0].camera.fx / 2) and math.isclose(cam.cx, 8.0)
    image = half.image(half.train[0])
    assert image.shape == (12, 16, 3)
    expected = full.image(full.train[0]).reshape(12, 2, 16, 2, 3).mean(dim=(1, 3))
    assert (image - expected).abs().mean() < 0.03


def test_split_every_8th_after_sorting_by_name():
    cam = Camera(look_at((0, 0, -1), (0, 0, 0), (0, -1, 0)), intrinsics_from_fov(4, 4, 60), 4, 4)
    frames = [Frame(f"{i:03d}.png", Path(f"{i:03d}.png"), cam) for i in reversed(range(17))]
    train, test = split_frames(frames, 8)
    assert [f.name for f in test] == ["000.png", "008.png", "016.png"]
    assert len(train) == 14 and train[0].name == "001.png"
    assert split_frames(frames, 0)[1] == []
    ds = load_dataset(FIX / "synthetic")
    assert [f.name for f in ds.test] == ["view_00.png", "view_08.png"] and len(ds.train) == 8


# ----- transforms.json ------------------------------------------------------------------------------------------
def test_nerf_synthetic_layout():
    truth = _truth()
    ds = load_dataset(FIX / "nerf_synthetic", DatasetOptions(background=(0.0, 0.0, 0.0)))
    assert ds.kind == "nerf_synthetic" and ds.points is None
    assert [f.name for f in ds.test] == ["test/r_0.png", "test/r_5.png"] and len(ds.train) == 8
    frame = ds.train[0]  # train/r_1.png
    assert frame.name == "train/r_1.png"
    assert torch.allclose(frame.camera.world_to_camera, truth["w2c"][1], atol=1e-6)
    assert torch.allclose(frame.camera.K, truth["K"], atol=1e-5)
    colmap_view = read_image_rgb(FIX / "synthetic" / "images" / "view_01.png", (0.0, 0.0, 0.0))
    assert (ds.image(frame) - colmap_view).abs().max() < 3 / 255  # RGBA on black == the rendered RGB


def test_nerf_synthetic_white_background():
    ds = load_dataset(FIX / "nerf_synthetic", DatasetOptions(background=(1.0, 1.0, 1.0)))
    black = load_dataset(FIX / "nerf_synthetic", DatasetOptions(background=(0.0, 0.0, 0.0)))
    white_img, black_img = ds.image(ds.train[0]), black.image(black.train[0])
    assert (white_img >= black_img - 1e-6).all() and (white_img - black_img).max() > 0.5


def test_nerfstudio_layout_and_distortion(tmp_path):
    truth = _truth()
    ds = load_dataset(FIX / "nerfstudio")
    assert ds.kind == "transforms" and len(ds.test) == 2 and len(ds.train) == 8
    for frame in ds.train + ds.test:
        i = int(Path(frame.name).stem.split("_")[1])
        assert torch.allclose(frame.camera.world_to_camera, truth["w2c"][i], atol=1e-6)
        assert torch.allclose(frame.camera.K, truth["K"], atol=1e-5) and frame.source is None
    root = tmp_path / "ns"
    shutil.copytree(FIX / "nerfstudio", root)
    meta = json.loads((root / "transforms.json").read_text())
    meta["k1"], meta["p2"] = 0.05, 0.001
    (root / "transforms.json").write_text(json.dumps(meta))
    frame = load_dataset(root, NO_SPLIT).train[0]
    assert frame.source.model == "OPENCV" and frame.source.params[4] == 0.05
    assert load_dataset(root, NO_SPLIT).image(frame).shape == (frame.camera.height, frame.camera.width, 3)
    meta["camera_model"] = "OPENCV_FISHEYE"
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="unsupported camera_model OPENCV_FISHEYE"):
        load_dataset(root)


def test_transforms_bad_input(tmp_path):
    root = tmp_path / "ns"
    shutil.copytree(FIX / "nerfstudio", root)
    meta = json.loads((root / "transforms.json").read_text())
    del meta["frames"][2]["transform_matrix"]
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"frames\[2\]: expected an object with 'file_path' and 'transform_matrix'"):
        load_dataset(root)
    (root / "transforms.json").write_text("{not json")
    with pytest.raises(DatasetError, match="transforms.json: invalid JSON"):
        load_dataset(root)


# ----- initialisation -------------------------------------------------------------------------------------------
def test_outlier_removal_drops_a_planted_outlier():
    g = torch.Generator().manual_seed(0)
    xyz = torch.cat([torch.randn(300, 3, generator=g) * 0.1, torch.tensor([[5.0, 5.0, 5.0]])])
    result = remove_outliers(PointCloud(xyz, torch.rand(301, 3, generator=g)))
    assert 300 not in result.kept.tolist() and len(result.points) >= 280
    assert torch.equal(result.points.xyz, xyz[result.kept])


def test_scales_from_three_nearest_neighbours():
    grid = torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(-1, 3) * 0.1
    assert torch.allclose(knn_mean_sq_dist(grid)[62], torch.tensor(0.01, dtype=torch.float64))  # centre point
    rgb = torch.rand(len(grid), 3)
    splats = splats_from_points(PointCloud(grid, rgb), sh_degree=2)
    assert torch.allclose(splats.log_scales[62], torch.full((3,), math.log(0.1)), atol=1e-5)
    assert torch.equal(splats.quats[:, 0], torch.ones(len(grid))) and splats.sh.shape == (125, 9, 3)
    assert torch.allclose(splats.opacities(), torch.full((125,), 0.1))
    assert torch.allclose(splats.base_colors(), rgb, atol=1e-6) and splats.sh[:, 1:].abs().max() == 0
