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
        scenes=(f"{scene}-g2",), gpu_budget_mib=1.0, chunk_size=64, lod_levels=2, lod_threshold_px=2.0,
        cache_fraction=0.03, renderer="torch", peers=("torch",), reference="torch", width=40, height=32,
        warmup_frames=1, timed_frames=3, peer_frames=2, quality_frames=2, device="cpu",
        chunk_dir=tmp_path / "chunks", out_dir=tmp_path / "results", revision="abc123"))
    result = json.loads(out.read_text())
    assert result["revision"] == "abc123" and not result["errors"]
    rows = {row["renderer"]: row for row in result["rows"]}
    assert set(rows) == {"streaming", "streaming-lod", "torch"}
    plain, lod, whole = rows["streaming"], rows["streaming-lod"], rows["torch"]
    assert plain["gaussians"] == 1600 and plain["gpu_budget_mib"] == 1.0 and plain["lod"] is False
    assert plain["frames"] == 3 and whole["frames"] == 2 and whole["whole_scene_resident"] is True
    assert plain["streamed_mib_per_frame"] > 0  # 0.03 MiB of cache: most of the visible set is streamed
    assert lod["lod"] is True and lod["fps"] > 0
    assert plain["reference"] == "torch" and plain["psnr_min"] >= 40 and plain["quality_frames"] == 2
    assert lod["reference"] == "torch" and lod["psnr_min"] > 15
    timings = result["timings"][f"{scene}-g2"]
    assert timings["build_s"] >= 0 and timings["chunk_file_bytes"] > 0 and timings["host_mib"] > 0
    chunk_files = list((tmp_path / "chunks").glob("*.gschunks"))
    assert len(chunk_files) == 1
    again = bench.run(bench.LargeSceneConfig(
        scenes=(f"{scene}-g2",), chunk_size=64, lod_levels=2, device="cpu", chunk_dir=tmp_path / "chunks",
        out_dir=tmp_path / "prep", prepare_only=True))
    assert json.loads(again.read_text())["timings"][f"{scene}-g2"]["chunk_file_reused"] is True
    merged = bench.run(bench.LargeSceneConfig(merge=(out, again), out_dir=tmp_path / "merged", what="both"))
    both = json.loads(merged.read_text())
    assert len(both["rows"]) == 3 and merged.with_suffix(".png").is_file() or merged.with_suffix(".svg").is_file()
