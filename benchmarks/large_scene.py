"""Large scenes under a GPU memory budget: the streaming renderer (chunk cache, depth slabs, LOD) beside the peer.

For each scene (``guitar-g24`` ~52M Gaussians, ``guitar-g34`` ~105M; any ``server.bench_scenes`` id or a path):
1. tile it (``BENCHMARK.md``) and cut it into a chunk file (built on the GPU when there is one, written without
   fsync to ``--chunk-dir``, reused by a later run of the same code);
2. read the whole chunk file into pinned host memory (the scene lives in host memory; the GPU holds the budget);
3. time :class:`renderer.streaming.StreamingRenderer` on the ``head`` path (stereo, 2064 x 2208) under
   ``--gpu-budget-mib``, LOD off and on: ``--warmup-frames`` poses, then ``--timed-frames`` poses; peak GPU memory is
   ``torch.cuda.max_memory_allocated`` over the whole run (reset before, nothing else on the GPU: it counts the
   chunk cache, the streamed entries, the rasterizer's temporaries and the frame outputs), compared with the budget
   + 10%; the frames of ``--quality-frames`` poses are kept on the host;
4. upload the whole scene and time the native renderer (``--reference``) on the first ``--peer-frames`` timed poses:
   its images on the kept poses are the reference of the streaming rows' PSNR (``psnr_min``/``psnr_mean``);
5. time the peers (``--peers``, gsplat) with the whole scene resident on the same poses (an out-of-memory is
   recorded in the row, not raised).

    python benchmarks/large_scene.py --scenes guitar-g24 guitar-g34 --gpu-budget-mib 4096
    python benchmarks/large_scene.py --prepare-only ...      # only build the chunk files
    python benchmarks/large_scene.py --merge A.json B.json   # one result (and plot) from several runs

Writes ``<out-dir>/<date>-<gpu>-<what>.json`` (``BENCHMARK.md`` rows plus ``gpu_budget_mib``, ``lod``, ``peak_mib``,
``within_budget`` and the streaming statistics; ``timings`` holds each scene's preparation times) after every row,
so that a run cut short keeps what it measured, and a plot (FPS against Gaussians, peak memory against Gaussians)
beside it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
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
from renderer.streaming import HostChunkStore, StreamingConfig, StreamingRenderer  # noqa: E402
from server.bench import _command_line, psnr, resolve_device  # noqa: E402
from server.bench_results import device_name, git_revision, slug  # noqa: E402
from server.bench_scenes import resolve_scene  # noqa: E402

MIB = 2**20
_STARTED = time.monotonic()


@dataclass(frozen=True)
class LargeSceneConfig:
    """What the large-scene benchmark runs (see the module docstring)."""

    scenes: tuple[str, ...] = ("guitar-g24", "guitar-g34")
    gpu_budget_mib: float = 4096.0
    chunk_size: int = 65536
    lod_levels: int = 3
    lod_threshold_px: float = 1.0
    cache_fraction: float = 0.6
    renderer: str = "auto"
    lod_modes: tuple[str, ...] = ("off", "on")
    peers: tuple[str, ...] = ("gsplat-unpacked", "gsplat-packed")
    reference: str = "auto"
    path: str = "head"
    width: int = 2064
    height: int = 2208
    warmup_frames: int = 8
    timed_frames: int = 232
    peer_frames: int = 96
    quality_frames: int = 24
    preload: bool = True
    device: str = "auto"
    build_device: str = "auto"
    data_dir: Path | None = None
    chunk_dir: Path = Path("benchmarks/.chunks")
    out_dir: Path = Path("benchmarks/results")
    what: str = "large-scene"
    revision: str | None = None
    plot: bool = True
    prepare_only: bool = False
    merge: tuple[Path, ...] = ()
    time_limit_s: float | None = None
    row_time_limit_s: float | None = None


def _rigs(config: LargeSceneConfig, scene) -> list:
    spec = scene.path_spec(config.width, config.height)
    return list(head_path(spec) if config.path == "head" else orbit_path(spec))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(device: torch.device, fn):
    """``(ms, result)`` of ``fn()``, synchronised on both sides."""
    _sync(device)
    t0 = time.perf_counter()
    result = fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3, result


def _fresh_peak(device: torch.device) -> int:
    """Free cached blocks, reset the peak; the bytes allocated now (the base of ``peak_extra``)."""
    if device.type != "cuda":
        return 0
    _sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _reserved_mib(device: torch.device) -> float | None:
    """Peak memory the caching allocator held (allocated + cached blocks), for context beside ``peak_mib``."""
    return round(torch.cuda.max_memory_reserved(device) / MIB, 1) if device.type == "cuda" else None


def _out_of_time(config: LargeSceneConfig) -> bool:
    return config.time_limit_s is not None and time.monotonic() - _STARTED > config.time_limit_s


def _stop_row(config: LargeSceneConfig, row_start: float, frames: int) -> bool:
    """Whether a timed loop stops early (``row_time_limit_s`` or ``time_limit_s`` passed; at least 8 frames)."""
    late = config.row_time_limit_s is not None and time.monotonic() - row_start > config.row_time_limit_s
    return frames >= 8 and (late or _out_of_time(config))


def _row(config, scene, renderer, times, peak, base, **extra) -> dict:
    ms = np.asarray(times) if times else np.zeros(1)

    def stat(q: float) -> float | None:
        return round(float(np.percentile(ms, q)), 4) if times else None

    med = stat(50)
    row = {"scene": scene.id, "gaussians": len(scene.splats), "sh_degree": scene.splats.sh_degree,
           "path": config.path, "eyes": 2, "width": config.width, "height": config.height, "renderer": renderer,
           "gpus": 1, "frames": len(times), "ms_median": med, "ms_p90": stat(90), "ms_p99": stat(99),
           "fps": round(1000.0 / med, 3) if med else None,
           "peak_mib": None if peak is None else round(peak / MIB, 1),
           "peak_extra_mib": None if peak is None else round((peak - base) / MIB, 1),
           "psnr_min": None, "psnr_mean": None, "reference": None}
    row.update(extra)
    return row


@dataclass
class _Result:
    """The result file, rewritten after every row."""

    config: LargeSceneConfig
    device: torch.device
    rows: list[dict] = field(default_factory=list)
    timings: dict[str, dict] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def path(self) -> Path:
        return Path(self.config.out_dir) / f"{self.date}-{slug(self.gpu)}-{slug(self.config.what)}.json"

    def __post_init__(self) -> None:
        self.date = datetime.date.today().isoformat()
        self.gpu = device_name(self.device)
        self.revision = self.config.revision or os.environ.get("GSCACHE_REVISION") or git_revision()

    def write(self) -> Path:
        result = {"command": _command_line(), "revision": self.revision, "gpu": self.gpu, "date": self.date,
                  "config": _jsonable(asdict(self.config)), "timings": self.timings, "errors": self.errors,
                  "rows": self.rows}
        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
        return path


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


# ----- preparation --------------------------------------------------------------------------------------------
def _code_digest() -> str:
    """A short hash of the code that decides a chunk file's content (so that a changed build is not reused)."""
    digest = hashlib.sha256()
    for rel in ("renderer/lod.py", "data/chunk_file.py", "server/bench_scenes.py"):
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:10]


def _build_device(config: LargeSceneConfig) -> torch.device:
    if config.build_device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(config.build_device)


def chunk_file_for(config: LargeSceneConfig, scene, timings: dict | None = None) -> Path:
    """The scene's chunk file in ``chunk_dir``, built (on the build device, CPU as a fallback) when missing."""
    name = f"{slug(scene.id)}-c{config.chunk_size}-l{config.lod_levels}-{_code_digest()}.gschunks"
    path = Path(config.chunk_dir) / name
    timings = {} if timings is None else timings
    if path.is_file():
        timings["chunk_file_reused"] = True
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    device = _build_device(config)
    t0 = time.perf_counter()
    try:
        chunked = build_chunked_scene(scene.splats, config.chunk_size, config.lod_levels, device=device)
    except Exception as err:  # noqa: BLE001 - e.g. no room on the GPU: the CPU builds an equivalent file
        if device.type == "cpu":
            raise
        print(f"chunk build on {device} failed ({err!s:.200}); building on the CPU", flush=True)
        timings["build_fallback"] = f"{err!s:.200}"
        device = torch.device("cpu")
        chunked = build_chunked_scene(scene.splats, config.chunk_size, config.lod_levels, device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    t1 = time.perf_counter()
    info = write_chunk_file(path, chunked, fsync=False, workers=min(16, os.cpu_count() or 1))
    t2 = time.perf_counter()
    timings.update(build_s=round(t1 - t0, 2), build_device=str(device), write_s=round(t2 - t1, 2),
                   chunk_file_bytes=info.file_bytes, chunks=info.num_chunks, levels=info.num_levels)
    print(f"{scene.id}: chunk file {path} ({info.file_bytes / 2**30:.2f} GiB, {info.num_chunks} chunks) built in "
          f"{t1 - t0:.1f} s on {device}, written in {t2 - t1:.1f} s", flush=True)
    return path


# ----- the runs -----------------------------------------------------------------------------------------------
def _streamer(config, chunk_file, host, device, lod: bool) -> StreamingRenderer:
    return StreamingRenderer(chunk_file, int(config.gpu_budget_mib * MIB), backend=config.renderer,
                             lod_threshold_px=config.lod_threshold_px if lod else None,
                             config=StreamingConfig(cache_fraction=config.cache_fraction), device=device, host=host)


def run_streaming(config, scene, chunk_file, host, rigs, timed, keep, device, lod: bool):
    """Time the streaming renderer along ``rigs`` (warm-up, then the ``timed`` indices) under the budget.

    Returns the row and the frames of the ``keep`` indices (host tensors).
    """
    base = _fresh_peak(device)
    streamer = _streamer(config, chunk_file, host, device, lod)
    times, kept, per_frame = [], {}, []
    for i in range(config.warmup_frames):
        _time(device, lambda i=i: streamer.render(rigs[i]))
    row_start, done = time.monotonic(), []
    for i in timed:
        if _stop_row(config, row_start, len(done)):
            break
        done.append(i)
        ms, out = _time(device, lambda i=i: streamer.render(rigs[i]))
        times.append(ms)
        s = streamer.last_stats
        per_frame.append((s.batches, s.frame_bytes_copied, s.frame_streamed_bytes, s.visible_gaussians, s.refreshed))
        if i in keep:
            kept[i] = out.image.cpu()
        del out
    peak, reserved = _peak(device), _reserved_mib(device)
    s = streamer.last_stats
    batches, copied, streamed, visible, refreshed = (np.asarray(col) for col in zip(*per_frame))
    budget = config.gpu_budget_mib * MIB
    extra = {
        "gpu_budget_mib": config.gpu_budget_mib, "lod": lod, "lod_threshold_px": config.lod_threshold_px if lod
        else None, "cache_fraction": config.cache_fraction, "chunks": streamer.source.num_chunks,
        "within_budget": None if peak is None else bool(peak - base <= 1.1 * budget),
        "peak_over_budget": None if peak is None else round((peak - base) / budget, 4),
        "cache_budget_mib": round(s.cache_budget_bytes / MIB, 1), "batch_capacity_last": s.batch_capacity,
        "batches_mean": round(float(batches.mean()), 2), "batches_max": int(batches.max()),
        "visible_gaussians_mean": int(visible.mean()), "visible_gaussians_max": int(visible.max()),
        "copied_mib_per_frame": round(float(copied.mean()) / MIB, 1),
        "streamed_mib_per_frame": round(float(streamed.mean()) / MIB, 1), "refreshes": int(refreshed.sum()),
        "hits": s.hits, "misses": s.misses, "evictions": s.evictions, "bytes_copied": s.bytes_copied,
        "levels_used_last": list(s.levels_used), "dropped_chunks_last": s.dropped_chunks,
        "pairs_per_item_last": round(s.pairs_per_item, 3), "poses": [done[0], done[-1] + 1],
        "truncated": len(done) < len(timed), "peak_reserved_mib": reserved, "ms_median_peer_poses": None}
    row = _row(config, scene, "streaming" + ("-lod" if lod else ""), times, peak, base, **extra)
    same = [t for t, i in zip(times, done) if i < timed[0] + config.peer_frames]
    row["ms_median_peer_poses"] = round(float(np.median(same)), 4) if same else None
    return row, kept  # the streamer and its device memory go with this frame


def run_whole(config, scene, full, rigs, timed, device, name: str, kept: dict[str, dict], rows: list[dict]) -> dict:
    """Time ``name`` with the whole scene resident on ``timed``; with ``kept`` (the reference), the PSNR of the kept
    streaming frames against its images (filled into ``rows``). An out-of-memory is recorded in the row."""
    base = _fresh_peak(device)
    scores: dict[str, list[float]] = {k: [] for k in kept}
    times = []
    try:
        for i in range(config.warmup_frames):
            _time(device, lambda i=i: render(full, rigs[i], backend=name))
        row_start, done = time.monotonic(), []
        for i in timed:
            if _stop_row(config, row_start, len(done)):
                break
            done.append(i)
            ms, out = _time(device, lambda i=i: render(full, rigs[i], backend=name))
            times.append(ms)
            if kept:
                image = None
                for renderer, frames in kept.items():
                    if i in frames:
                        image = out.image.cpu() if image is None else image
                        scores[renderer].append(psnr(frames[i], image))
            del out
    except torch.OutOfMemoryError as err:
        _fresh_peak(device)
        return _row(config, scene, name, [], None, 0, whole_scene_resident=True,
                    error=f"out of memory with the whole scene resident: {err!s:.300}")
    peak = _peak(device)
    row = _row(config, scene, name, times, peak, base, whole_scene_resident=True,
               scene_resident_mib=round(scene.splats.nbytes() / MIB, 1), poses=[done[0], done[-1] + 1],
               truncated=len(done) < len(timed), peak_reserved_mib=_reserved_mib(device))
    row["peak_mib"] = None if peak is None else round(peak / MIB, 1)  # includes the resident scene
    for renderer, values in scores.items():
        for r in rows:
            if r["scene"] == scene.id and r["renderer"] == renderer and values:
                r.update(psnr_min=round(min(values), 3), psnr_mean=round(float(np.mean(values)), 3),
                         reference=name, quality_frames=len(values))
    return row


def _scene_run(config: LargeSceneConfig, scene_id: str, device: torch.device, result: _Result) -> None:
    timings = result.timings.setdefault(scene_id, {})
    t0 = time.perf_counter()
    scene = resolve_scene(scene_id, config.data_dir, device="cpu")
    timings["tile_s"] = round(time.perf_counter() - t0, 2)
    path = chunk_file_for(config, scene, timings)
    result.write()
    if config.prepare_only:
        return
    chunk_file = open_chunk_file(path, verify=False)
    host = HostChunkStore(chunk_file, pin=device.type == "cuda")
    if config.preload:
        t0 = time.perf_counter()
        host.preload(workers=min(16, os.cpu_count() or 1))
        timings["preload_s"] = round(time.perf_counter() - t0, 2)
        timings["host_mib"] = round(host.nbytes / MIB, 1)
    rigs = _rigs(config, scene)
    timed = list(range(config.warmup_frames, min(len(rigs), config.warmup_frames + config.timed_frames)))
    peer_timed = timed[:config.peer_frames]
    step = max(1, len(peer_timed) // max(1, config.quality_frames))
    keep = set(peer_timed[::step][:config.quality_frames]) if config.quality_frames else set()
    kept: dict[str, dict] = {}
    for mode in config.lod_modes:
        if _out_of_time(config):
            result.errors.append(f"{scene_id} streaming lod {mode}: skipped (time limit {config.time_limit_s} s)")
            continue
        t0 = time.perf_counter()
        try:
            row, frames = run_streaming(config, scene, chunk_file, host, rigs, timed, keep, device, mode == "on")
        except Exception as err:  # noqa: BLE001 - record it and go on with the other rows
            result.errors.append(f"{scene_id} streaming lod {mode}: {traceback.format_exc(limit=6)}")
            print(f"{scene_id} streaming lod {mode} failed: {err}", flush=True)
            _fresh_peak(device)
            continue
        _fresh_peak(device)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        result.rows.append(row)
        kept[row["renderer"]] = frames
        result.write()
        print(_summary(row), flush=True)
    del host
    if _out_of_time(config):
        result.errors.append(f"{scene_id}: whole-scene rows skipped (time limit {config.time_limit_s} s)")
        result.write()
        return
    reference = config.reference if config.reference != "auto" else ("native" if device.type == "cuda" else "torch")
    whole = list(dict.fromkeys([reference, *config.peers]))
    full = None
    try:
        full = scene.splats.to(device)
    except torch.OutOfMemoryError as err:
        for name in whole:
            result.rows.append(_row(config, scene, name, [], None, 0, whole_scene_resident=True,
                                    error=f"out of memory uploading the whole scene: {err!s:.300}"))
        result.write()
        return
    for name in whole:
        if _out_of_time(config):
            result.errors.append(f"{scene_id} {name}: skipped (time limit {config.time_limit_s} s)")
            result.write()
            continue
        t0 = time.perf_counter()
        try:
            row = run_whole(config, scene, full, rigs, peer_timed, device, name, kept if name == reference else {},
                            result.rows)
        except Exception as err:  # noqa: BLE001 - e.g. a peer that is not installed
            result.errors.append(f"{scene_id} {name}: {traceback.format_exc(limit=6)}")
            print(f"{scene_id} {name} failed: {err}", flush=True)
            continue
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        result.rows.append(row)
        result.write()
        print(_summary(row), flush=True)
    del full
    _fresh_peak(device)


def _summary(row: dict) -> str:
    psnr_text = f", PSNR min {row['psnr_min']} mean {row['psnr_mean']}" if row.get("psnr_min") is not None else ""
    budget = f", within budget {row['within_budget']}" if "within_budget" in row else ""
    return (f"{row['scene']} {row['renderer']}: {row['ms_median']} ms median ({row['fps']} FPS), peak "
            f"{row['peak_mib']} MiB (extra {row['peak_extra_mib']}){budget}{psnr_text}"
            + (f" [{row['error'][:80]}]" if row.get("error") else ""))


def run(config: LargeSceneConfig) -> Path:
    if config.merge:
        return merge(config)
    device = resolve_device(config.device)
    result = _Result(config, device)
    for scene_id in config.scenes:
        _scene_run(config, scene_id, device, result)
    path = result.write()
    if config.plot and result.rows and not config.prepare_only:
        plot(path)
    return path


# ----- merge and plot -----------------------------------------------------------------------------------------
def merge(config: LargeSceneConfig) -> Path:
    """One result from several (``--merge``): rows, timings and errors together, the first file's header."""
    parts = [json.loads(Path(p).read_text()) for p in config.merge if Path(p).is_file()]
    if not parts:
        raise FileNotFoundError(f"merge: none of {', '.join(map(str, config.merge))} exists")
    merged = {**parts[0], "command": _command_line(), "rows": [r for p in parts for r in p["rows"]],
              "timings": {k: v for p in parts for k, v in p.get("timings", {}).items()},
              "errors": [e for p in parts for e in p.get("errors", [])], "merged_from": [str(p) for p in config.merge]}
    path = Path(config.out_dir) / f"{merged['date']}-{slug(merged['gpu'])}-{slug(config.what)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2, allow_nan=False) + "\n")
    if config.plot:
        plot(path)
    return path


def plot(json_path: Path) -> Path | None:
    """FPS and peak GPU memory against Gaussians, one line per renderer (the peer dashed): ``.png`` beside the JSON
    with matplotlib, else a plain ``.svg``."""
    result = json.loads(Path(json_path).read_text())
    rows = [r for r in result["rows"] if r.get("fps")]
    if not rows:
        return None
    title = f"{result['gpu']} - {str(result['revision'])[:12]} - {result['date']} - budget " \
            f"{rows[0].get('gpu_budget_mib') or result.get('config', {}).get('gpu_budget_mib')} MiB"
    try:
        import matplotlib
    except ImportError:
        return _plot_svg(rows, Path(json_path).with_suffix(".svg"), title)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    renderers = list(dict.fromkeys(r["renderer"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for key, ax, label in (("fps", axes[0], "FPS (1000 / median stereo frame ms)"),
                           ("peak_mib", axes[1], "peak GPU memory (MiB, max_memory_allocated)")):
        for i, name in enumerate(renderers):
            pts = sorted((r["gaussians"], r[key]) for r in rows if r["renderer"] == name and r.get(key))
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, "--" if name.startswith("gsplat") else "-", marker="o", color=f"C{i}", label=name)
        if key == "peak_mib" and rows[0].get("gpu_budget_mib"):
            ax.axhline(rows[0]["gpu_budget_mib"], color="k", lw=0.8, ls=":", label="budget")
            ax.axhline(1.1 * rows[0]["gpu_budget_mib"], color="r", lw=0.8, ls=":", label="budget + 10%")
            ax.set_yscale("log")  # the whole-scene rows hold the scene itself: tens of GiB
        ax.set_xscale("log")
        ax.set_xlabel("Gaussians")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(f"{title}; stereo {rows[0]['width']}x{rows[0]['height']} per eye, {rows[0]['path']} path",
                 fontsize="medium")
    fig.tight_layout()
    out = Path(json_path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_svg(rows: list[dict], out: Path, title: str) -> Path:
    """A bar chart of FPS per (scene, renderer) without matplotlib."""
    bars = [(f"{r['scene']} {r['renderer']}", float(r["fps"]), r.get("peak_mib")) for r in rows]
    top = max(b[1] for b in bars) or 1.0
    width, row_h = 900, 22
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{40 + row_h * len(bars)}" '
             'font-family="sans-serif" font-size="12">', f'<text x="10" y="20">{title}: FPS (peak MiB)</text>']
    for i, (label, fps, peak) in enumerate(bars):
        y = 30 + i * row_h
        w = 400 * fps / top
        colour = "#999" if "gsplat" in label else "#1f77b4"
        lines.append(f'<text x="10" y="{y + 14}">{label}</text>')
        lines.append(f'<rect x="300" y="{y}" width="{w:.1f}" height="{row_h - 6}" fill="{colour}"/>')
        lines.append(f'<text x="{305 + w:.1f}" y="{y + 14}">{fps:.1f} ({peak})</text>')
    lines.append("</svg>")
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    import tyro

    print(run(tyro.cli(LargeSceneConfig, args=argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
