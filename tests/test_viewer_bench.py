"""``benchmarks/viewer_gl_fps.py`` at a tiny size on whatever GL is here (Mesa llvmpipe in CI)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("moderngl", reason="viewer extra not installed (pip install -e '.[viewer]')")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ["scene", "gaussians", "sh_degree", "path", "eyes", "width", "height", "renderer", "gpus", "frames",
          "ms_median", "ms_p90", "ms_p99", "fps", "peak_extra_mib", "psnr_min", "psnr_mean", "reference"]


def _load_script():
    spec = importlib.util.spec_from_file_location("viewer_gl_fps", ROOT / "benchmarks" / "viewer_gl_fps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_viewer_gl_fps_writes_a_benchmark_result(tmp_path):
    from viewer.gl_context import standalone_context

    try:
        standalone_context("auto").release()
    except OSError as err:
        pytest.skip(f"no OpenGL 3.3 context here: {err}")
    script = _load_script()
    scene = str(ROOT / "assets" / "fixtures" / "guitar_1k_sh3.ply")
    config = script.GLBenchConfig(scenes=(scene,), width=48, height=32, frames=3, warmup=1, quality_frames=1,
                                  gl="auto", out_dir=tmp_path, what="viewer-gl-test")
    result = script.run(config)
    files = list(tmp_path.glob("*-viewer-gl-test.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == result
    assert {"command", "revision", "gpu", "date", "rows"} <= set(result)
    row = result["rows"][0]
    assert list(row)[: len(SCHEMA)] == SCHEMA
    assert row["renderer"] == "viewer-gl" and row["frames"] == 3 and row["gaussians"] == 1000
    assert row["sh_degree"] == 3 and row["fps"] > 0 and row["ms_p99"] >= row["ms_median"] > 0
    assert row["psnr_min"] >= 35.0 and row["reference"] == "torch"


def test_viewer_vs_bench_compares_the_viewer_path_with_the_bench_case(tmp_path):
    from viewer.gl_context import standalone_context

    try:
        standalone_context("auto").release()
    except OSError as err:
        pytest.skip(f"no OpenGL 3.3 context here: {err}")
    script = _load_script()
    scene = str(ROOT / "assets" / "fixtures" / "guitar_1k_sh3.ply")
    config = script.GLBenchConfig(scenes=(scene,), width=16, height=12, frames=2, warmup=1, quality_frames=1,
                                  gl="auto", out_dir=tmp_path, vs_bench=True, renderer="torch", uploads=("host",),
                                  plot=False, revision="test-rev")
    result = script.run(config)
    files = list(tmp_path.glob("*-viewer-vs-bench.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == result
    assert result["revision"] == "test-rev"
    bench, viewer = result["rows"]
    assert list(bench)[: len(SCHEMA)] == SCHEMA and list(viewer)[: len(SCHEMA)] == SCHEMA
    assert bench["renderer"] == "torch" and viewer["renderer"] == "viewer-torch-host"
    for row in (bench, viewer):
        assert (row["eyes"], row["width"], row["height"], row["path"], row["frames"]) == (2, 16, 12, "orbit", 48)
    assert viewer["fps_ratio_vs_bench"] == pytest.approx(viewer["fps"] / bench["fps"], rel=1e-3)
    assert viewer["upload"] == "host" and viewer["output_size"] == [32, 12]
    assert viewer["psnr_min"] >= 50.0 and viewer["reference"] == "torch"  # the shown frame is the bench's image
