"""The benchmark harness (server/bench*.py) and the gsplat adapter: scenes, the result file, the timing loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from data import save_scene
from renderer import Camera, Splats, intrinsics_from_fov, render
from renderer.backends import BackendRegistry, BackendUnavailableError, TorchBackend, default_registry
from server.bench import PSNR_CAP_DB, BenchConfig, bench_main, psnr, resolve_device, run_benchmark
from server.bench_results import BenchResult, BenchRow, result_stem, slug
from server.bench_scenes import (
    SceneId,
    add_sh3,
    default_data_dir,
    parse_scene_id,
    resolve_scene,
    scene_file,
    tile_scene,
)

ROW_TYPES: dict[str, tuple[type, ...]] = {
    "scene": (str,), "gaussians": (int,), "sh_degree": (int,), "path": (str,), "eyes": (int,), "width": (int,),
    "height": (int,), "renderer": (str,), "gpus": (int,), "frames": (int,), "ms_median": (float,),
    "ms_p90": (float,), "ms_p99": (float,), "fps": (float,), "peak_extra_mib": (float, type(None)),
    "psnr_min": (float, type(None)), "psnr_mean": (float, type(None)), "reference": (str, type(None)),
}


@pytest.fixture
def random_ply(tmp_path: Path) -> Path:
    path = tmp_path / "rand300.ply"
    save_scene(path, Splats.random(300, sh_degree=1, seed=3))
    return path


# ----- scenes ---------------------------------------------------------------------------------------------------
def test_tile_scene_counts_spacing_and_centre() -> None:
    base = Splats.random(50, sh_degree=1, seed=1, extent=2.0)
    lo, hi = base.bounds()
    spacing = 1.1 * float((hi - lo).max())
    tiled = tile_scene(base, 3)
    assert len(tiled) == 9 * 50 and tiled.sh_degree == 1
    copies = tiled.means.reshape(9, 50, 3)
    offsets = copies - base.means[None]  # [9, 50, 3]: one constant offset per copy
    assert torch.allclose(offsets, offsets[:, :1].expand_as(offsets), atol=1e-5)
    per_copy = offsets[:, 0]  # [9, 3]
    assert torch.allclose(per_copy[:, 1], torch.zeros(9))  # y (up/down) untouched: tiles lie on x-z
    assert torch.allclose(per_copy.mean(0), torch.zeros(3), atol=1e-5)  # grid centred on the original
    xs, zs = per_copy[:, 0].unique(), per_copy[:, 2].unique()
    assert len(xs) == 3 and len(zs) == 3
    assert torch.allclose(xs.diff(), torch.full((2,), spacing), rtol=1e-5)
    assert torch.allclose(zs.diff(), torch.full((2,), spacing), rtol=1e-5)
    for name in ("quats", "log_scales", "opacity_logits", "sh"):
        value = getattr(tiled, name)
        assert torch.equal(value.reshape(9, 50, *value.shape[1:])[4], getattr(base, name))


def test_tile_scene_grid_one_is_identity_and_rejects_zero() -> None:
    base = Splats.random(20, seed=2)
    assert torch.equal(tile_scene(base, 1).means, base.means)
    with pytest.raises(ValueError, match="grid: expected >= 1"):
        tile_scene(base, 0)


@pytest.mark.skipif(not (default_data_dir() / "guitar.ply").is_file(), reason="guitar.ply not found")
def test_guitar_g4_count() -> None:
    scene = resolve_scene("guitar-g4")
    assert len(scene.splats) == 1_453_664 and scene.grid == 4
    assert len(scene.splats) // 16 * 64 == 5_814_656 and len(scene.splats) // 16 * 144 == 13_082_976
    assert scene.path_spec().radius == pytest.approx((1.2 + 0.6 * 4) * scene.extent)


def test_add_sh3_is_seeded_and_keeps_dc() -> None:
    base = Splats.random(400, sh_degree=0, seed=4)
    a, b, c = add_sh3(base, seed=7), add_sh3(base, seed=7), add_sh3(base, seed=8)
    assert a.sh.shape == (400, 16, 3) and a.sh_degree == 3
    assert torch.equal(a.sh, b.sh)
    assert not torch.equal(a.sh[:, 1:], c.sh[:, 1:])
    assert torch.equal(a.sh[:, 0], base.sh[:, 0])
    assert float(a.sh[:, 1:].std()) == pytest.approx(0.15, rel=0.05)
    assert torch.equal(a.means, base.means)


def test_parse_scene_ids() -> None:
    assert parse_scene_id("guitar") == SceneId("guitar", 1, False)
    assert parse_scene_id("guitar-g12") == SceneId("guitar", 12, False)
    assert parse_scene_id("guitar-sh3") == SceneId("guitar", 1, True)
    assert parse_scene_id("playbot-g8-sh3") == SceneId("playbot", 8, True)
    with pytest.raises(ValueError, match="grid must be >= 1"):
        parse_scene_id("guitar-g0")
    with pytest.raises(ValueError, match="expected '<base>"):
        parse_scene_id("")


def test_missing_scene_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="guitar.ply not found; pass --data-dir"):
        scene_file("guitar", tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.ply not found"):
        resolve_scene(str(tmp_path / "nowhere.ply"))


def test_resolve_scene_from_ply_path(random_ply: Path) -> None:
    scene = resolve_scene(f"{random_ply}-g2-sh3")
    assert len(scene.splats) == 4 * 300 and scene.splats.sh_degree == 3 and scene.grid == 2
    base = resolve_scene(str(random_ply))
    lo, hi = base.splats.bounds()
    assert base.extent == pytest.approx(float((hi - lo).max()))
    assert scene.center[1] == pytest.approx(base.center[1])


# ----- result file ----------------------------------------------------------------------------------------------
def test_psnr_identical_is_capped_and_known_noise() -> None:
    img = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    assert psnr(img, img.clone()) == PSNR_CAP_DB
    noisy = img.clone()
    noisy[0, 0, 0, 0] = img[0, 0, 0, 0] + 0.5 if img[0, 0, 0, 0] < 0.5 else img[0, 0, 0, 0] - 0.5
    assert psnr(noisy, img) == pytest.approx(-10 * math.log10(0.25 / img.numel()), rel=1e-4)
    with pytest.raises(ValueError, match="differs from reference"):
        psnr(img, img[:1])


def test_result_json_round_trip_and_stem() -> None:
    row = BenchRow("guitar", 90854, 0, "orbit", 2, 2064, 2208, "native", 1, 96, 1.0, 1.1, 1.2, 1000.0, 12.5,
                   40.0, 45.0, "gsplat-unpacked")
    result = BenchResult("gscache bench", "abc", "NVIDIA H100 80GB HBM3", "2026-11-22", (row,))
    obj = json.loads(json.dumps(result.to_json()))
    assert list(obj) == ["command", "revision", "gpu", "date", "rows"]
    assert list(obj["rows"][0]) == list(ROW_TYPES)
    assert BenchResult.from_json(obj) == result
    assert result_stem(result, "guitar orbit") == "2026-11-22-nvidia-h100-80gb-hbm3-guitar-orbit"
    assert slug("AMD EPYC 7B13") == "amd-epyc-7b13"


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="paths: expected 'orbit' or 'head'"):
        BenchConfig(paths=("spiral",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eyes: expected 1 or 2"):
        BenchConfig(eyes=3)
    with pytest.raises(ValueError, match="renderers: expected at least one"):
        BenchConfig(renderers=())
    assert BenchConfig().frames_for("head") == 240 and BenchConfig().frames_for("orbit") == 96
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here"):
            resolve_device("cuda")


# ----- the harness end to end -----------------------------------------------------------------------------------
def test_harness_end_to_end_torch(tmp_path: Path, random_ply: Path) -> None:
    registry = BackendRegistry()
    registry.register("torch", TorchBackend)
    registry.register("torch-b", TorchBackend)  # a second instance: identical images
    config = BenchConfig(scenes=(str(random_ply),), paths=("orbit", "head"), renderers=("torch", "torch-b"),
                         width=64, height=64, warmup_frames=2, timed_frames=3, cover_path=False, device="cpu",
                         out_dir=tmp_path, what="tiny", progress=False, command="pytest", revision="test")
    result = run_benchmark(config, registry)
    assert len(result.rows) == 4
    for row in result.rows:
        assert row.frames == 3 and row.eyes == 2 and row.gaussians == 300 and row.sh_degree == 1
        assert 0 < row.ms_median <= row.ms_p90 <= row.ms_p99
        assert row.fps == pytest.approx(1000 / row.ms_median, rel=1e-3, abs=1e-3)  # fps is rounded to 3 decimals
        assert row.peak_extra_mib is None  # CPU
        if row.renderer == "torch":
            assert row.reference is None and row.psnr_min is None
        else:
            assert row.reference == "torch" and row.psnr_min == row.psnr_mean == PSNR_CAP_DB


def test_bench_main_writes_json_and_png(tmp_path: Path, random_ply: Path) -> None:
    from PIL import Image

    config = BenchConfig(scenes=(str(random_ply),), paths=("orbit",), renderers=("torch",), width=64, height=48,
                         eyes=1, warmup_frames=2, timed_frames=3, cover_path=False, device="cpu",
                         out_dir=tmp_path, what="tiny", progress=False, command="pytest")
    report = bench_main(config)
    assert report.files.json_path.parent == tmp_path and report.files.json_path.name.endswith("-tiny.json")
    obj = json.loads(report.files.json_path.read_text())
    assert obj["command"] == "pytest" and obj["gpu"] and obj["date"] and obj["revision"]
    assert obj["date"] in report.files.json_path.name
    (row,) = obj["rows"]
    assert set(ROW_TYPES) <= set(row)
    for key, types in ROW_TYPES.items():
        assert isinstance(row[key], types), (key, row[key])
    assert (row["renderer"], row["eyes"], row["width"], row["height"], row["frames"]) == ("torch", 1, 64, 48, 3)
    assert report.files.plot_path is not None and report.files.plot_path.stem == report.files.json_path.stem
    with Image.open(report.files.plot_path) as png:
        assert png.size[0] > 100 and png.size[1] > 100


# ----- gsplat ---------------------------------------------------------------------------------------------------
def test_gsplat_unavailable_on_cpu_says_why() -> None:
    for name in ("gsplat", "gsplat-unpacked", "gsplat-packed"):
        with pytest.raises(BackendUnavailableError, match="CUDA"):
            default_registry().resolve(name, torch.device("cpu"))


def _random_view(n: int, seed: int, width: int = 160, height: int = 120, cx_shift: float = 0.0):
    splats = Splats.random(n, sh_degree=3, seed=seed, extent=1.0, device="cuda")
    k = intrinsics_from_fov(width, height, 70.0, cx=width / 2 + cx_shift)
    cam = Camera.look_at((0.4, -0.6, -3.0), (0.0, 0.0, 0.0), (0.0, -1.0, 0.0), k, width, height)
    cam2 = Camera.look_at((-0.5, -0.3, -2.5), (0.1, 0.0, 0.0), (0.0, -1.0, 0.0), k, width, height)
    return splats, [cam, cam2]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["gsplat-unpacked", "gsplat-packed"])
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_gsplat_matches_torch(backend: str, sh_degree: int) -> None:
    splats, cams = _random_view(3000, seed=11, cx_shift=9.0)
    bg = (0.1, 0.2, 0.3)
    ref = render(splats, cams, backend="torch", sh_degree=sh_degree, background=bg, render_mode="rgb+depth")
    out = render(splats, cams, backend=backend, sh_degree=sh_degree, background=bg, render_mode="rgb+depth")
    assert out.image.shape == ref.image.shape == (2, 120, 160, 3)
    assert out.alpha.shape == ref.alpha.shape and out.depth.shape == ref.depth.shape
    assert psnr(out.image, ref.image) >= 45.0
    assert (out.alpha - ref.alpha).abs().mean() < 1e-3
    hit = (ref.alpha > 0.5) & (out.alpha > 0.5)
    assert ((out.depth - ref.depth).abs()[hit] / ref.depth[hit]).mean() < 1e-2
    assert len(out.stats.visible) == 2 and out.stats.tile_keys > 0
    assert all(abs(v - r) <= 0.02 * r + 5 for v, r in zip(out.stats.visible, ref.stats.visible))


@pytest.mark.gpu
def test_gsplat_alpha_and_depth_modes() -> None:
    splats, cams = _random_view(1000, seed=12)
    rgbd = render(splats, cams, backend="gsplat", render_mode="rgb+depth")
    alpha = render(splats, cams, backend="gsplat", render_mode="alpha")
    depth = render(splats, cams, backend="gsplat", render_mode="depth")
    assert alpha.image is None and alpha.depth is None and depth.image is None
    assert torch.allclose(alpha.alpha, rgbd.alpha, atol=1e-5)
    assert torch.allclose(depth.depth, rgbd.depth, atol=1e-4)


@pytest.mark.gpu
def test_harness_gsplat_vs_torch_on_gpu(tmp_path: Path, random_ply: Path) -> None:
    config = BenchConfig(scenes=(str(random_ply),), paths=("orbit",), renderers=("gsplat-unpacked",),
                         reference="torch", width=96, height=64, warmup_frames=2, timed_frames=4, cover_path=False,
                         device="cuda", out_dir=tmp_path, progress=False, command="pytest", revision="test")
    (row,) = run_benchmark(config).rows
    assert row.peak_extra_mib is not None and row.peak_extra_mib > 0
    assert row.reference == "torch" and row.psnr_min >= 45.0


def test_frame_cache_renderer_in_the_harness(tmp_path):
    """`<backend>-cache` renders through the frame cache along the path; quality is taken in path order."""
    from server.bench import BenchConfig, run_benchmark

    scene = tmp_path / "scene.ply"
    from data import save_scene
    from renderer import Splats

    save_scene(scene, Splats.random(300, sh_degree=1, seed=2))
    config = BenchConfig(scenes=(str(scene),), paths=("head",), renderers=("torch", "torch-cache"), width=32,
                         height=24, warmup_frames=1, timed_frames=3, cover_path=False, device="cpu", progress=False,
                         plot=False)
    rows = {row.renderer: row for row in run_benchmark(config).rows}
    assert set(rows) == {"torch", "torch-cache"}
    cached = rows["torch-cache"]
    assert cached.reference == "torch" and cached.psnr_min >= 40 and cached.frames == 3


def test_diagnostic_benchmarks_write_the_result_schema(tmp_path):
    """benchmarks/result_files.py (native_kernel_split.py, viewer_overhead.py): BENCHMARK.md's keys, the script's
    own, the plot beside the JSON; a missing matplotlib leaves the JSON alone."""
    import json

    from benchmarks.result_files import write_result_files

    def no_matplotlib(png):
        raise ImportError("No module named 'matplotlib'")

    path = write_result_files(tmp_path, "viewer-overhead", "python x.py", "abc123", "NVIDIA H200",
                              [{"scene": "guitar", "sustained_ms": 1.5}], lambda png: png.write_bytes(b"png"),
                              gl_renderer="NVIDIA H200/PCIe")
    doc = json.loads(path.read_text())
    assert path.name.endswith("-nvidia-h200-viewer-overhead.json") and path.with_suffix(".png").is_file()
    assert {k: doc[k] for k in ("command", "revision", "gpu", "gl_renderer")} == {
        "command": "python x.py", "revision": "abc123", "gpu": "NVIDIA H200", "gl_renderer": "NVIDIA H200/PCIe"}
    assert doc["rows"] == [{"scene": "guitar", "sustained_ms": 1.5}] and doc["date"]
    bare = write_result_files(tmp_path / "b", "k", "c", None, "CPU", [], no_matplotlib)
    assert json.loads(bare.read_text())["revision"] == "unknown" and not bare.with_suffix(".png").exists()


def test_git_revision_is_named_by_the_environment_where_there_is_no_git(monkeypatch, tmp_path):
    from server.bench_results import git_revision

    monkeypatch.delenv("GSCACHE_REVISION", raising=False)
    assert git_revision(tmp_path) == "unknown"  # no repository there
    monkeypatch.setenv("GSCACHE_REVISION", "abc1234")
    assert git_revision(tmp_path) == "abc1234"
