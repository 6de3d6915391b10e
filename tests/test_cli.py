"""The gscache command, called in-process (and once as a real process): outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import load_scene, save_scene
from gscache.cli import main
from renderer import Splats, intrinsics_from_fov, look_at

ROOT = Path(__file__).resolve().parents[1]


def _small_scene(tmp_path: Path, n: int = 200, sh_degree: int = 1) -> Path:
    path = tmp_path / "scene.ply"
    save_scene(path, Splats.random(n, sh_degree=sh_degree, seed=3))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.count("\n") == 0, err
    return err


def test_demo_renders_the_bundled_scene(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "2", "--width", "96", "--height", "64",
                 "--device", "cpu"]) == 0
    frames = sorted(out.glob("frame_*.png"))
    assert [f.name for f in frames] == ["frame_0000.png", "frame_0001.png"]
    pixels = np.asarray(Image.open(frames[0]))
    assert pixels.shape == (64, 96, 3)
    assert (pixels.max(axis=-1) > 30).mean() > 0.02  # the scene is visible, not a black frame
    assert not list(out.glob(".*tmp"))


def test_render_stereo_side_by_side_with_depth(tmp_path):
    scene = _small_scene(tmp_path)
    out = tmp_path / "r"
    code = main(["render", str(scene), "--out", str(out), "--frames", "1", "--width", "40", "--height", "32",
                 "--stereo", "--mode", "rgb+depth", "--device", "cpu", "--backend", "torch"])
    assert code == 0
    assert np.asarray(Image.open(out / "frame_0000.png")).shape == (32, 80, 3)
    depth = np.asarray(Image.open(out / "frame_0000_depth.png"))
    assert depth.shape == (32, 80) and depth.max() > 0


def test_render_alpha_mode(tmp_path):
    scene = _small_scene(tmp_path)
    out = tmp_path / "a"
    assert main(["render", str(scene), "--out", str(out), "--frames", "1", "--width", "32", "--height", "24",
                 "--mode", "alpha", "--device", "cpu"]) == 0
    assert np.asarray(Image.open(out / "frame_0000_alpha.png")).shape == (24, 32)


def test_render_given_cameras(tmp_path):
    scene = _small_scene(tmp_path)
    w2c = look_at((0, 0, -3), (0, 0, 0), (0, -1, 0))
    gl_c2w = torch.linalg.inv(w2c) @ torch.diag(torch.tensor([1.0, -1, -1, 1], dtype=torch.float64))
    cams = {"cameras": [
        {"width": 30, "height": 20, "K": intrinsics_from_fov(30, 20, 60).tolist(), "world_to_camera": w2c.tolist()},
        {"width": 30, "height": 20, "fov_x_deg": 60, "c2w_opengl": gl_c2w.tolist()},
    ]}
    cam_file = tmp_path / "cams.json"
    cam_file.write_text(json.dumps(cams))
    out = tmp_path / "c"
    assert main(["render", str(scene), "--out", str(out), "--cameras", str(cam_file), "--device", "cpu"]) == 0
    first, second = (np.asarray(Image.open(out / f"frame_000{i}.png")) for i in (0, 1))
    assert first.shape == (20, 30, 3)
    np.testing.assert_array_equal(first, second)  # the same pose given two ways


def test_info_and_convert_round_trip(tmp_path, capsys):
    scene = _small_scene(tmp_path, n=123, sh_degree=2)
    assert main(["info", str(scene)]) == 0
    text = capsys.readouterr().out
    assert "123" in text and "SH degree" in text
    splat = tmp_path / "scene.splat"
    assert main(["convert", str(scene), str(splat)]) == 0
    back = tmp_path / "back.ply"
    assert main(["convert", str(splat), str(back)]) == 0
    assert len(load_scene(back)) == 123 and load_scene(back).sh_degree == 0


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda p: ["info", str(p / "missing.ply")], "missing.ply"),
        (lambda p: ["render", str(p / "scene.ply"), "--out", str(p / "o"), "--width", "0"], "width"),
        (lambda p: ["render", str(p / "scene.ply"), "--out", str(p / "o"), "--backend", "nope"], "unknown backend"),
        (lambda p: ["render", str(p / "scene.ply"), "--out", str(p / "o"), "--cameras", str(p / "bad.json")],
         "bad.json: not valid JSON"),
        (lambda p: ["convert", str(p / "scene.ply"), str(p / "out.xyz")], "out.xyz"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make_args, message):
    _small_scene(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    assert main(make_args(tmp_path)) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "out.xyz").exists()


def test_truncated_and_nonfinite_scenes(tmp_path, capsys):
    scene = _small_scene(tmp_path)
    data = scene.read_bytes()
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(data[: len(data) - 100])
    assert main(["info", str(truncated)]) == 2
    assert "truncated.ply" in _error_line(capsys)

    splats = load_scene(scene)
    means = splats.means.clone()
    means[[3, 7]] = float("nan")
    nan_path = tmp_path / "nan.ply"
    save_scene(nan_path, Splats(means, splats.quats, splats.log_scales, splats.opacity_logits, splats.sh))
    assert main(["render", str(nan_path), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    line = _error_line(capsys)
    assert "nan.ply" in line and "2" in line
    assert not (tmp_path / "o").exists()
    out = tmp_path / "clean.ply"
    assert main(["convert", str(nan_path), str(out), "--drop-nonfinite"]) == 0
    assert len(load_scene(out)) == len(splats) - 2


def test_console_script_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gscache", "info", str(tmp_path / "nope.ply")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("gscache: error:") and "Traceback" not in proc.stderr
