"""``benchmarks/large_scene.py`` at tiny scale on the CPU: the JSON it writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from data import save_scene
from renderer import Splats

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("large_scene_bench", ROOT / "benchmarks" / "large_scene.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    return module


def test_large_scene_benchmark_tiny(tmp_path):
    bench = _load_script()
    scene = tmp_path / "tiny.ply"
    save_scene(scene, Splats.random(400, seed=1, extent=0.5))
    out = bench.run(bench.LargeSceneConfig(
        scenes=(f"{scene}-g2",), gpu_budget_mib=0.2, chunk_size=64, lod_levels=2, lod_threshold_px=2.0,
        cache_fraction=0.5, renderer="torch", peers=("torch",), reference="torch", width=40, height=32,
        warmup_frames=1, timed_frames=2, quality_frames=2, device="cpu", chunk_dir=tmp_path / "chunks",
        out_dir=tmp_path / "results"))
    result = json.loads(out.read_text())
    rows = {row["renderer"]: row for row in result["rows"]}
    assert set(rows) == {"streaming", "streaming-lod", "torch"}
    plain, lod = rows["streaming"], rows["streaming-lod"]
    assert plain["gaussians"] == 1600 and plain["gpu_budget_mib"] == 0.2 and plain["lod"] is False
    assert lod["lod"] is True and lod["frames"] == 2 and lod["fps"] > 0
    assert plain["reference"] == "torch" and plain["psnr_min"] >= 40
    assert list((tmp_path / "chunks").glob("*.gschunks"))
