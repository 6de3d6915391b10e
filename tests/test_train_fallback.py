"""Training without pycolmap / open3d (a GPU machine lacking their wheels), and the trainer's GPU-minded pieces on
the CPU: the COLMAP text reader and undistortion against pycolmap, the SciPy initialisation against open3d, the
rasterizer against render(), partial files of a killed run, and checkpoints without a CUDA RNG state."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gsplat")
pytest.importorskip("scipy")

from data.dataset import DatasetOptions, PointCloud, SourceCamera  # noqa: E402
from training import colmap_text  # noqa: E402
from training.config import DefaultStrategyConfig, InitConfig, preset  # noqa: E402
from training.init import initial_splats_from  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures" / "train"
NO_REFINE = DefaultStrategyConfig(refine_start_iter=10_000)


def _config(**changes):
    return dataclasses.replace(preset("test"), device="cpu", backend="torch", **changes)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sorted_rows(t: torch.Tensor) -> np.ndarray:
    a = t.numpy()
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("name,downscale", [("snowmiku_crop", 1), ("synthetic", 1), ("synthetic", 2)])
def test_colmap_text_reader_equals_pycolmap(name, downscale):
    pytest.importorskip("pycolmap")
    from data.colmap import read_colmap_dataset

    options = DatasetOptions(downscale=downscale, background=(0.0, 0.0, 0.0))
    a = read_colmap_dataset(FIX / name, options)
    b = colmap_text.read_colmap_text_dataset(FIX / name, options)
    assert [f.name for f in a.train] == [f.name for f in b.train] and [f.name for f in a.test] == [f.name for f in
                                                                                                   b.test]
    for fa, fb in zip(a.train + a.test, b.train + b.test, strict=True):
        assert (fa.camera.width, fa.camera.height) == (fb.camera.width, fb.camera.height)
        assert torch.allclose(fa.camera.K, fb.camera.K, rtol=0, atol=1e-9)
        assert torch.allclose(fa.camera.world_to_camera, fb.camera.world_to_camera, rtol=0, atol=1e-9)
        assert (fa.source is None) == (fb.source is None)
    for fa, fb in zip(a.train[:3], b.train[:3], strict=True):
        assert torch.allclose(a.image(fa), b.image(fb), rtol=0, atol=1e-6)
    assert len(a.points) == len(b.points)
    assert np.array_equal(_sorted_rows(torch.cat([a.points.xyz, a.points.rgb], 1)),
                          _sorted_rows(torch.cat([b.points.xyz, b.points.rgb], 1)))


@pytest.mark.parametrize("model,params", [
    ("SIMPLE_RADIAL", (400.0, 252.0, 189.0, 0.05)), ("SIMPLE_RADIAL", (400.0, 252.0, 189.0, -0.08)),
    ("RADIAL", (400.0, 250.0, 190.0, -0.1, 0.02)), ("OPENCV", (410.0, 400.0, 250.0, 190.0, -0.2, 0.05, 1e-3, -2e-3)),
    ("PINHOLE", (410.0, 400.0, 250.0, 190.0)),
])
def test_undistortion_equals_pycolmap(model, params):
    pytest.importorskip("pycolmap")
    from data import undistort

    source = SourceCamera(model, params, 504, 378)
    k_a, w_a, h_a = undistort.pinhole_intrinsics(source)
    k_b, w_b, h_b = colmap_text.undistort_camera(source)
    assert (w_a, h_a) == (w_b, h_b) and torch.allclose(k_a, k_b, rtol=0, atol=1e-9)
    if model != "PINHOLE":
        assert torch.allclose(undistort.remap_grid(source), colmap_text.remap_grid(source), rtol=0, atol=1e-5)


def test_colmap_text_bad_input(tmp_path):
    from data.dataset import DatasetError

    root = tmp_path / "scene"
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "sparse" / "0" / "cameras.txt").write_text("1 EQUIRECTANGULAR 10 10 1 2 3\n")
    (root / "sparse" / "0" / "images.txt").write_text("")
    (root / "sparse" / "0" / "points3D.txt").write_text("")
    with pytest.raises(DatasetError, match="EQUIRECTANGULAR"):
        colmap_text.read_colmap_text_dataset(root, DatasetOptions())
    (root / "sparse" / "0" / "cameras.txt").write_text("1 PINHOLE 10 10 5 5 5\n")
    with pytest.raises(DatasetError, match="PINHOLE takes 4 parameters"):
        colmap_text.read_colmap_text_dataset(root, DatasetOptions())
    (root / "sparse" / "0" / "cameras.txt").write_text("1 PINHOLE 10 10 5 5 5 5\n")
    with pytest.raises(DatasetError, match="no images"):
        colmap_text.read_colmap_text_dataset(root, DatasetOptions())
    (root / "sparse" / "0" / "images.txt").write_text("1 1 0 0 0 0 0 0 1 missing.png\n\n")
    with pytest.raises(DatasetError, match="image file missing"):
        colmap_text.read_colmap_text_dataset(root, DatasetOptions())


def test_scipy_initialisation_equals_open3d():
    pytest.importorskip("open3d")
    points = colmap_text.read_colmap_text_dataset(FIX / "snowmiku_crop", DatasetOptions()).points
    g = torch.Generator().manual_seed(0)
    planted = PointCloud(torch.cat([points.xyz, torch.tensor([[50.0, 50.0, 50.0]])]),
                         torch.cat([points.rgb, torch.rand(1, 3, generator=g)]))
    for cloud in (planted, None):
        a = initial_splats_from(cloud, InitConfig(random_points=3000), 3, 0, use_open3d=True)
        b = initial_splats_from(cloud, InitConfig(random_points=3000), 3, 0, use_open3d=False)
        assert len(a) == len(b)
        for field in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            assert torch.allclose(getattr(a, field), getattr(b, field), rtol=0, atol=1e-6), field
    assert len(initial_splats_from(planted, InitConfig(), 0, 0, use_open3d=False)) < len(planted)


def test_training_without_pycolmap_and_open3d(tmp_path, monkeypatch):
    """The trainer picks the text reader and SciPy when the two packages are missing, and trains."""
    from training import init as init_module
    from training.trainer import Trainer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pycolmap", "open3d") else real(name, *a))
    assert not init_module.have_open3d()
    trainer = Trainer(_config(steps=6, strategy=NO_REFINE), FIX / "snowmiku_crop", tmp_path)
    assert isinstance(trainer.dataset.images, colmap_text.FallbackImageCache)
    result = trainer.train()
    assert result.finished and result.last_eval is not None and result.last_eval.psnr > 5


def test_rasterizer_equals_render_and_gives_strategy_info():
    from renderer import render
    from training.params import splats_from_params
    from training.rasterize import Rasterizer
    from training.trainer import initial_splats, open_dataset

    config = _config()
    dataset = open_dataset(FIX / "synthetic", config)
    splats = splats_from_params(torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v) for k, v in _params(initial_splats(dataset, config)).items()}))
    frame = dataset.train[0]
    bg = torch.tensor([dataset.background])
    image, info = Rasterizer("torch", torch.device("cpu"))(splats, frame.camera, 1, bg)
    ref = render(splats, frame.camera, backend="torch", sh_degree=1, background=bg).image[0]
    assert torch.equal(image, ref)
    assert info["means2d"].shape == (1, len(splats), 2) and info["n_cameras"] == 1 and info["gaussian_ids"] is None
    assert (info["width"], info["height"]) == (frame.camera.width, frame.camera.height)
    info["means2d"].retain_grad()  # as DefaultStrategy.step_pre_backward does
    image.sum().backward()
    assert info["means2d"].grad is not None and info["means2d"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="absgrad"):
        Rasterizer("torch", torch.device("cpu"), absgrad=True)


def _params(splats):
    return {"means": splats.means, "scales": splats.log_scales, "quats": splats.quats,
            "opacities": splats.opacity_logits, "sh0": splats.sh[:, :1].contiguous(),
            "shN": splats.sh[:, 1:].contiguous()}


def test_partial_files_of_a_killed_run_are_removed_on_resume(tmp_path):
    from training.atomic import stale_temp_files
    from training.trainer import Trainer

    config = _config(steps=6, checkpoint_every=3, strategy=NO_REFINE)
    Trainer(config, FIX / "synthetic", tmp_path).train(stop_at=4)
    # what SIGKILL during a checkpoint or image write leaves: atomic_path's temporaries, never the files themselves
    partial = [tmp_path / ".checkpoint.pt.4242.0123abcd.tmp", tmp_path / "renders" / ".r_0.png.4242.89abcdef.tmp"]
    for path in partial:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("not ours")
    assert stale_temp_files(tmp_path) == sorted(partial)
    result = Trainer(config, FIX / "synthetic", tmp_path, resume=True).train()
    assert result.finished and not stale_temp_files(tmp_path) and (tmp_path / "notes.tmp").is_file()


def test_checkpoint_without_cuda_rng_loads(tmp_path):
    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.trainer import Trainer

    trainer = Trainer(_config(steps=2, strategy=NO_REFINE), FIX / "synthetic", tmp_path)
    ckpt = trainer.checkpoint(0.0)
    assert ckpt.cuda_rng is None
    save_checkpoint(tmp_path / "new.pt", ckpt)
    payload = {f.name: getattr(ckpt, f.name) for f in dataclasses.fields(ckpt) if f.name != "cuda_rng"}
    torch.save(payload, tmp_path / "old.pt")  # the layout before cuda_rng existed
    for name in ("new.pt", "old.pt"):
        assert load_checkpoint(tmp_path / name).step == 0
    torch.save({**payload, "surprise": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a gscache checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
