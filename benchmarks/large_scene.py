"""Large scenes under a GPU memory budget: the streaming renderer (chunk cache, prefetch, LOD) beside the peer.

For each scene (``guitar-g24`` ~52M Gaussians, ``guitar-g34`` ~105M; any ``server.bench_scenes`` id or a path):
1. tile it (``BENCHMARK.md``), cut it into a chunk file (cached in ``--chunk-dir``);
2. time :class:`renderer.streaming.StreamingRenderer` on the ``head`` path (stereo, 2064 x 2208) under
   ``--gpu-budget-mib``, LOD off and on: frame times, peak GPU memory (``max_memory_allocated``, total and above
   what was resident before), cache statistics;
3. time the peer (``--peers``, gsplat) with the whole scene resident, where it fits (an out-of-memory is recorded);
4. PSNR of the streaming frames against a full render of the whole scene (``--reference``) on ``--quality-frames``
   poses, where the whole scene fits.

    python benchmarks/large_scene.py --scenes guitar-g24 guitar-g34 --gpu-budget-mib 4096

Writes ``<out-dir>/<date>-<gpu>-large-scene.json`` (``BENCHMARK.md`` rows plus ``gpu_budget_mib``, ``lod``,
``peak_mib`` and the streaming statistics).
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data import open_chunk_file, write_chunk_file  # noqa: E402
from renderer import render  # noqa: E402
from renderer.lod import build_chunked_scene  # noqa: E402
from renderer.paths import head_path, orbit_path  # noqa: E402
from renderer.streaming import StreamingConfig, StreamingRenderer  # noqa: E402
from server.bench import _command_line, psnr, resolve_device  # noqa: E402
from server.bench_results import device_name, git_revision, slug  # noqa: E402
from server.bench_scenes import resolve_scene  # noqa: E402

MIB = 2**20


@dataclass(frozen=True)
class LargeSceneConfig:
    """What the large-scene benchmark runs (see the module docstring)."""

    scenes: tuple[str, ...] = ("guitar-g24", "guitar-g34")
    gpu_budget_mib: float = 4096.0
    chunk_size: int = 65536
    lod_levels: int = 3
    lod_threshold_px: float = 1.0
    cache_fraction: float = 0.4
    renderer: str = "auto"
    peers: tuple[str, ...] = ("gsplat-unpacked", "gsplat-packed")
    reference: str = "auto"
    path: str = "head"
    width: int = 2064
    height: int = 2208
    warmup_frames: int = 8
    timed_frames: int = 240
    quality_frames: int = 24
    device: str = "auto"
    data_dir: Path | None = None
    chunk_dir: Path = Path("benchmarks/.chunks")
    out_dir: Path = Path("benchmarks/results")
    what: str = "large-scene"


def _rigs(config: LargeSceneConfig, scene) -> list:
    spec = scene.path_spec(config.width, config.height)
    return list(head_path(spec) if config.path == "head" else orbit_path(spec))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(device: torch.device, fn) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def _row(config, scene, renderer, times, peak, base, **extra) -> dict:
    ms = np.asarray(times) if times else np.zeros(1)
    med = float(np.median(ms)) if times else None

    def stat(q: float) -> float | None:
        return round(float(np.percentile(ms, q)), 4) if times else None

    row = {"scene": scene.id, "gaussians": len(scene.splats), "sh_degree": scene.splats.sh_degree,
           "path": config.path, "eyes": 2, "width": config.width, "height": config.height, "renderer": renderer,
           "gpus": 1, "frames": len(times), "ms_median": stat(50), "ms_p90": stat(90),
           "ms_p99": stat(99), "fps": round(1000.0 / med, 3) if med else None,
           "peak_mib": None if peak is None else round(peak / MIB, 1),
           "peak_extra_mib": None if peak is None else round((peak - base) / MIB, 1),
           "psnr_min": None, "psnr_mean": None, "reference": None}
    row.update(extra)
    return row


def _streamer(config, chunk_path, device, lod: bool) -> StreamingRenderer:
    return StreamingRenderer(open_chunk_file(chunk_path, verify=False), int(config.gpu_budget_mib * MIB),
                             backend=config.renderer, lod_threshold_px=config.lod_threshold_px if lod else None,
                             config=StreamingConfig(cache_fraction=config.cache_fraction), device=device)


def run_streaming(config, scene, chunk_path, rigs, device, lod: bool) -> dict:
    """Time the streaming renderer along ``rigs`` under the budget; the row with its cache statistics."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    streamer = _streamer(config, chunk_path, device, lod)
    times = []
    for i in range(config.warmup_frames + config.timed_frames):
        ms = _time(device, lambda i=i: streamer.render(rigs[i % len(rigs)]))
        if i >= config.warmup_frames:
            times.append(ms)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    s = streamer.last_stats
    extra = {"gpu_budget_mib": config.gpu_budget_mib, "lod": lod, "lod_threshold_px": config.lod_threshold_px if lod
             else None, "chunks": streamer.source.num_chunks, "hits": s.hits, "misses": s.misses,
             "evictions": s.evictions, "bytes_copied": s.bytes_copied, "levels_used_last": list(s.levels_used),
             "dropped_chunks_last": s.dropped_chunks, "within_budget": None if peak is None else
             bool(peak - base <= 1.1 * config.gpu_budget_mib * MIB)}
    return _row(config, scene, "streaming" + ("-lod" if lod else ""), times, peak, base, **extra)


def run_peer(config, scene, rigs, device, name: str) -> dict:
    """Time ``name`` with the whole scene resident (an out-of-memory is recorded in the row)."""
    splats = None
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        splats = scene.splats.to(device)
        times = []
        for i in range(config.warmup_frames + config.timed_frames):
            ms = _time(device, lambda i=i: render(splats, rigs[i % len(rigs)], backend=name))
            if i >= config.warmup_frames:
                times.append(ms)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        return _row(config, scene, name, times, peak, base, whole_scene_resident=True)
    except torch.OutOfMemoryError as e:
        return _row(config, scene, name, [], None, 0, whole_scene_resident=True, error=f"out of memory: {e}"[:200])
    finally:
        splats = None  # free the whole scene before the next case


def add_quality(config, scene, chunk_path, rigs, device, row: dict) -> None:
    """PSNR of streaming frames (LOD as in ``row``) against full renders of the whole scene."""
    try:
        full = scene.splats.to(device)
        streamer = _streamer(config, chunk_path, device, row["lod"])
        step = max(1, len(rigs) // max(1, config.quality_frames))
        scores = []
        for rig in rigs[::step][:config.quality_frames]:
            scores.append(psnr(streamer.render(rig).image, render(full, rig, backend=config.reference).image))
        row.update(psnr_min=round(min(scores), 3), psnr_mean=round(float(np.mean(scores)), 3),
                   reference=config.reference)
    except torch.OutOfMemoryError:
        row.update(reference=None, quality_error="out of memory: the whole scene does not fit for the reference")


def chunk_file_for(config, scene) -> Path:
    path = Path(config.chunk_dir) / f"{slug(scene.id)}-c{config.chunk_size}-l{config.lod_levels}.gschunks"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_chunk_file(path, build_chunked_scene(scene.splats, config.chunk_size, config.lod_levels))
    return path


def run(config: LargeSceneConfig) -> Path:
    device = resolve_device(config.device)
    rows = []
    for scene_id in config.scenes:
        scene = resolve_scene(scene_id, config.data_dir, device="cpu")
        chunk_path = chunk_file_for(config, scene)
        rigs = _rigs(config, scene)
        for lod in (False, True):
            row = run_streaming(config, scene, chunk_path, rigs, device, lod)
            if config.quality_frames:
                add_quality(config, scene, chunk_path, rigs, device, row)
            rows.append(row)
        rows.extend(run_peer(config, scene, rigs, device, name) for name in config.peers)
    result = {"command": _command_line(), "revision": git_revision(), "gpu": device_name(device),
              "date": datetime.date.today().isoformat(), "rows": rows}
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['date']}-{slug(result['gpu'])}-{slug(config.what)}.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    import tyro

    print(run(tyro.cli(LargeSceneConfig, args=argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
