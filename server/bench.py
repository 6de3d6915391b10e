"""The benchmark harness behind ``gscache bench``: the protocol of ``BENCHMARK.md``.

For every scene x path x renderer it renders ``warmup_frames`` untimed frames, then ``timed_frames`` timed ones
(raised to the path's length when ``cover_path``), cycling through the path's poses. A frame is one render call
with all eyes as a batch of cameras; on CUDA it is timed with events around the call and synchronised after it,
on CPU with ``perf_counter``. The scene and every camera are on the device before timing starts, and everything
runs under ``torch.inference_mode()``. Quality is the PSNR of each renderer's frames against a reference renderer
on the same poses, measured after the timing.
"""

from __future__ import annotations

import datetime
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from renderer.backends import Backend, BackendRegistry, default_registry
from renderer.cameras import CameraBatch, StereoRig, stack_cameras
from renderer.frame_cache import CacheConfig, FrameCache
from renderer.paths import head_path, orbit_path
from renderer.streaming import MIB as MIB_BYTES
from renderer.streaming import StreamedScene
from renderer.types import RenderOptions

from .bench_results import BenchResult, BenchRow, ResultFiles, device_name, git_revision, write_result
from .bench_scenes import BenchScene, resolve_scene

PathName = Literal["orbit", "head"]
PATH_FRAMES: dict[str, int] = {"orbit": 48, "head": 240}
PROTOCOL_MIN_WARMUP, PROTOCOL_MIN_TIMED = 8, 96
CACHE_SUFFIX = "-cache"
STREAMING_KINDS = ("streaming", "streaming-lod", "streaming-cache")
PSNR_CAP_DB = 100.0  # identical images: the MSE is floored at 1e-10 so that the JSON never holds inf
MIB = 1024.0 * 1024.0


@dataclass(frozen=True)
class BenchConfig:
    """What ``gscache bench`` runs.

    Attributes:
        scenes: scene ids (``guitar``, ``playbot``, ``guitar-g8``, ``guitar-g8-sh3``, a path to a ``.ply``, ...).
        paths: camera paths, ``orbit`` (48 poses) and/or ``head`` (240 poses).
        renderers: registered backend names to time (``native``, ``gsplat-unpacked``, ``gsplat-packed``, ``torch``),
            or ``<backend>-cache`` (``native-cache``, ``torch-cache``) for the frame cache over a staged backend,
            or ``[<backend>-]streaming``, ``-streaming-lod``, ``-streaming-cache`` for the scene's chunks rendered by
            :class:`renderer.streaming.StreamingRenderer` under ``gpu_budget_mib`` (level 0 only; with levels of
            detail; through the frame cache).
        reference: renderer the PSNR is taken against; the first of ``renderers`` when None.
        quality: measure PSNR against ``reference`` (one extra render per pose and renderer, untimed).
        width: image width per eye (the protocol: 2064).
        height: image height per eye (the protocol: 2208).
        eyes: 2 for a stereo frame (both eyes in one call), 1 for the centre eye alone.
        fov_x_deg: horizontal field of view.
        principal_offset: the left eye's principal point offset in pixels (the right eye's is mirrored in x).
        warmup_frames: untimed frames before timing (the protocol: at least 8).
        timed_frames: timed frames (the protocol: at least 96).
        cover_path: raise ``timed_frames`` to the path's length so that every pose is timed.
        device: ``auto`` (CUDA when available, else CPU), ``cuda``, ``cuda:1``, ``cpu``.
        data_dir: folder with the base scene files; ``../shared/data/playcanvas_splats`` beside the repo when None.
        sh_seed: seed of the SH degree 3 coefficients of ``-sh3`` scenes.
        out_dir: where the JSON and the plot go.
        what: the last part of the file name; made from the scenes and paths when None.
        plot: write the plot beside the JSON.
        progress: show a progress bar.
        command: the command recorded in the result; the process's command line when None.
        revision: the git revision recorded; detected from the repository when None.
        gpu_budget_mib: the streaming renderers' GPU memory budget (needed by them).
        chunk_size, lod_levels: how a scene that is not a chunk file is cut into chunks for the streaming
            renderers (``gscache convert --chunks``'s options; levels only for ``-streaming-lod``).
        lod_threshold_px: ``-streaming-lod``'s screen-space error threshold in pixels.
    """

    scenes: tuple[str, ...] = ("guitar",)
    paths: tuple[PathName, ...] = ("orbit",)
    renderers: tuple[str, ...] = ("native", "gsplat-unpacked", "gsplat-packed")
    reference: str | None = None
    quality: bool = True
    width: int = 2064
    height: int = 2208
    eyes: int = 2
    fov_x_deg: float = 90.0
    principal_offset: tuple[float, float] = (0.0, 0.0)
    warmup_frames: int = PROTOCOL_MIN_WARMUP
    timed_frames: int = PROTOCOL_MIN_TIMED
    cover_path: bool = True
    device: str = "auto"
    data_dir: Path | None = None
    sh_seed: int = 0
    out_dir: Path = Path("benchmarks/results")
    what: str | None = None
    plot: bool = True
    progress: bool = True
    command: str | None = None
    revision: str | None = None
    gpu_budget_mib: float | None = None
    chunk_size: int = 65536
    lod_levels: int = 2
    lod_threshold_px: float = 1.0

    def __post_init__(self) -> None:
        for name in ("scenes", "paths", "renderers"):
            if not getattr(self, name):
                raise ValueError(f"{name}: expected at least one, got none")
        unknown = [p for p in self.paths if p not in PATH_FRAMES]
        if unknown:
            raise ValueError(f"paths: expected 'orbit' or 'head', got {', '.join(map(repr, unknown))}")
        if self.eyes not in (1, 2):
            raise ValueError(f"eyes: expected 1 or 2, got {self.eyes}")
        if self.warmup_frames < 0 or self.timed_frames < 1:
            raise ValueError(f"warmup_frames >= 0 and timed_frames >= 1 expected, got {self.warmup_frames} and "
                             f"{self.timed_frames}")
        names = dict.fromkeys((*self.renderers, self.reference_name))
        streaming = [n for n in names if _renderer_kind(n)[1] in STREAMING_KINDS]
        if streaming and self.gpu_budget_mib is None:
            raise ValueError(f"renderers {', '.join(streaming)}: the streaming renderers need --gpu-budget-mib")
        if self.gpu_budget_mib is not None and not self.gpu_budget_mib > 0:
            raise ValueError(f"gpu_budget_mib: expected > 0, got {self.gpu_budget_mib}")
        if self.chunk_size < 1 or not 0 <= self.lod_levels <= 8:
            raise ValueError(f"chunk_size >= 1 and lod_levels 0..8 expected, got {self.chunk_size} and "
                             f"{self.lod_levels}")

    @property
    def reference_name(self) -> str:
        return self.renderers[0] if self.reference is None else self.reference

    def frames_for(self, path: str) -> int:
        """Timed frames on ``path``."""
        return max(self.timed_frames, PATH_FRAMES[path]) if self.cover_path else self.timed_frames


@dataclass(frozen=True)
class CaseTiming:
    """Frame times of one case (ms, in frame order) and its peak extra GPU memory (None on CPU)."""

    frame_ms: tuple[float, ...]
    peak_extra_mib: float | None


@dataclass(frozen=True)
class Quality:
    """PSNR of one renderer against the reference over a path's frames (dB, capped at ``PSNR_CAP_DB``)."""

    psnr_min: float
    psnr_mean: float


@dataclass(frozen=True)
class BenchReport:
    """What :func:`bench_main` returns: the result and the files it was written to."""

    result: BenchResult
    files: ResultFiles


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the current CUDA device when there is one, else the CPU; other names as given."""
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def run_benchmark(config: BenchConfig, registry: BackendRegistry | None = None) -> BenchResult:
    """Run every case of ``config`` (see the module docstring) and return the result; writes nothing."""
    registry = default_registry() if registry is None else registry
    device = resolve_device(config.device)
    names = list(dict.fromkeys([*config.renderers, *([config.reference_name] if config.quality else [])]))
    # fails early, naming what is missing; "<backend>-cache" renders through the frame cache over <backend>
    backends = {name: registry.resolve(_base_backend(name), device) for name in names}
    rows: list[BenchRow] = []
    with torch.inference_mode(), _progress(config.progress) as progress:
        task = progress.add_task("bench", total=_total_renders(config))
        kinds = {_renderer_kind(n)[1] for n in names}
        for scene_id in config.scenes:
            progress.update(task, description=f"loading {scene_id}")
            # a chunk file is loaded whole only for renderers that are not streaming
            scene = resolve_scene(scene_id, config.data_dir, device, sh_seed=config.sh_seed,
                                  load_chunk_splats=not kinds <= set(STREAMING_KINDS))
            streamed = None
            if kinds & set(STREAMING_KINDS):
                progress.update(task, description=f"chunking {scene_id}")
                levels = config.lod_levels if "streaming-lod" in kinds else 0
                streamed = StreamedScene(scene.chunked(config.chunk_size, levels),
                                         int(config.gpu_budget_mib * MIB_BYTES), config.lod_threshold_px)
                streamed.renderer(backend="torch", device="cpu")  # a budget too small for a chunk fails here
            for path in config.paths:
                rows += _run_scene_path(config, scene, path, backends, lambda: progress.advance(task),
                                        lambda d: progress.update(task, description=d), streamed)
            del scene, streamed
            _free(device)
    return BenchResult(command=config.command or _command_line(), revision=config.revision or git_revision(),
                       gpu=device_name(device), date=datetime.date.today().isoformat(), rows=tuple(rows))


def bench_main(config: BenchConfig) -> BenchReport:
    """``gscache bench``: run the benchmark, write the JSON and plot to ``config.out_dir``, print a summary."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 140)  # logs: keep the summary table's columns readable
    if config.warmup_frames < PROTOCOL_MIN_WARMUP or config.timed_frames < PROTOCOL_MIN_TIMED:
        console.print(f"[yellow]note: fewer frames than the protocol's {PROTOCOL_MIN_WARMUP} warm-up + "
                      f"{PROTOCOL_MIN_TIMED} timed; do not quote these figures as protocol results[/]")
    result = run_benchmark(config)
    files = write_result(result, config.out_dir, config.what or "-".join([*config.scenes, *config.paths]),
                         plot=config.plot)
    console.print(summary_table(result))
    console.print(f"wrote {files.json_path}" + (f" and {files.plot_path}" if files.plot_path else ""))
    return BenchReport(result, files)


def summary_table(result: BenchResult):  # -> rich.table.Table
    """A rich table of the rows (one line per case)."""
    from rich.table import Table

    table = Table(title=f"{result.gpu} @ {result.revision[:12]}")
    for col in ("scene", "N", "path", "renderer", "frames", "ms median", "p90", "p99", "FPS", "peak MiB",
                "PSNR min/mean"):
        table.add_column(col, justify="left" if col in ("scene", "path", "renderer") else "right")
    for r in result.rows:
        peak = "-" if r.peak_extra_mib is None else f"{r.peak_extra_mib:,.0f}"
        psnr = "-" if r.psnr_min is None else f"{r.psnr_min:.1f}/{r.psnr_mean:.1f} vs {r.reference}"
        table.add_row(r.scene, f"{r.gaussians:,}", r.path, r.renderer, str(r.frames), f"{r.ms_median:.2f}",
                      f"{r.ms_p90:.2f}", f"{r.ms_p99:.2f}", f"{r.fps:,.1f}", peak, psnr)
    return table


# ----- one scene on one path -----------------------------------------------------------------------------------
def _run_scene_path(config: BenchConfig, scene: BenchScene, path: str, backends: dict[str, Backend],
                    advance: Callable[[], None], describe: Callable[[str], None],
                    streamed: StreamedScene | None = None) -> list[BenchRow]:
    """Time every renderer on ``scene`` along ``path``, then measure quality; one row per renderer.
    ``streamed``: the scene's chunks under the budget, for the streaming renderers."""
    spec = scene.path_spec(config.width, config.height, config.fov_x_deg, config.principal_offset)
    rigs = list(orbit_path(spec) if path == "orbit" else head_path(spec))
    device = scene.device
    dtype = scene.splats.dtype if scene.splats is not None else torch.float32
    batches = [_camera_batch(rig, config.eyes, device, dtype) for rig in rigs]
    background = torch.zeros(config.eyes, 3, device=device, dtype=dtype)
    options = RenderOptions(background=background)
    frames = config.frames_for(path)
    timings: dict[str, CaseTiming] = {}
    for name in config.renderers:
        describe(f"{scene.id} {path} {name}")
        source = _FrameSource(name, backends[name], scene, rigs, batches, options, background, config.eyes,
                              streamed)
        timings[name] = _time_case(source, scene, config.warmup_frames, frames, advance)
    quality: dict[str, Quality] = {}
    reference = config.reference_name
    others = [n for n in config.renderers if n != reference]
    if config.quality and others:
        describe(f"{scene.id} {path} quality vs {reference}")
        poses = batches[:min(frames, len(batches))]
        sources = {n: _FrameSource(n, backends[n], scene, rigs, batches, options, background, config.eyes,
                                streamed)
                   for n in [reference, *others]}
        quality = _measure_quality(sources, reference, others, len(poses), advance)
    offset = None if config.principal_offset == (0.0, 0.0) else tuple(config.principal_offset)
    return [_row(config, scene, path, name, timings[name], quality.get(name),
                 reference if name in quality else None, offset) for name in config.renderers]


def _camera_batch(rig: StereoRig, eyes: int, device: torch.device, dtype: torch.dtype) -> CameraBatch:
    """Both eyes ``[2]`` (stereo) or the centre eye ``[1]`` as a :class:`CameraBatch` on ``device``."""
    return stack_cameras(rig if eyes == 2 else rig.head, device, dtype)


def _renderer_kind(name: str) -> tuple[str, str]:
    """A renderer name's backend and kind: ``native-cache`` -> ``(native, cache)``, ``torch-streaming-lod`` ->
    ``(torch, streaming-lod)``, ``streaming`` -> ``(auto, streaming)``, ``native`` -> ``(native, "")``."""
    if name in STREAMING_KINDS:
        return "auto", name
    for kind in (*STREAMING_KINDS, CACHE_SUFFIX[1:]):
        if name.endswith("-" + kind):
            return name.removesuffix("-" + kind), kind
    return name, ""


def _base_backend(name: str) -> str:
    """The backend under a renderer name: ``native-cache`` -> ``native``."""
    return _renderer_kind(name)[0]


class _FrameSource:
    """Frame ``i`` of a path for one renderer: a backend call on the i-th camera batch, or, for ``*-cache`` and
    streaming renderers, the frame cache or a :class:`StreamingRenderer` over ``streamed`` fed the path's rigs in
    order (a new one per source, so each case starts cold)."""

    def __init__(self, name: str, backend: Backend, scene: BenchScene, rigs: Sequence[StereoRig],
                 batches: Sequence[CameraBatch], options: RenderOptions, background: torch.Tensor, eyes: int,
                 streamed: StreamedScene | None = None) -> None:
        self.backend, self.scene, self.rigs, self.batches = backend, scene, rigs, batches
        self.options, self.background, self.eyes = options, background, eyes
        kind = _renderer_kind(name)[1]
        self.cache = FrameCache(scene.splats, backend=_base_backend(name)) if kind == "cache" else None
        self.streaming = None
        if kind in STREAMING_KINDS:
            lod = streamed.lod_threshold_px if kind == "streaming-lod" else None
            cache_config = CacheConfig() if kind == "streaming-cache" else None
            self.streaming = replace(streamed, lod_threshold_px=lod).renderer(_base_backend(name), scene.device,
                                                                              cache_config)

    def render(self, i: int) -> torch.Tensor:
        """The image ``[C, H, W, 3]`` of frame ``i`` (cycling through the path)."""
        if self.streaming is not None:
            rig = self.rigs[i % len(self.rigs)]
            return self.streaming.render(rig if self.eyes == 2 else rig.head, background=self.background).image
        if self.cache is not None:
            rig = self.rigs[i % len(self.rigs)]
            return self.cache.render(rig if self.eyes == 2 else rig.head, background=self.background).image
        cams = self.batches[i % len(self.batches)]
        return self.backend.render(self.scene.splats, cams, self.options, self.background).image


def _time_case(source: _FrameSource, scene: BenchScene, warmup: int, frames: int,
               advance: Callable[[], None]) -> CaseTiming:
    """Warm up on the last ``warmup`` poses, then time ``frames`` frames from pose 0, cycling through ``batches``.

    Peak extra memory is ``max_memory_allocated`` over the case (warm-up included, so that buffers a backend keeps
    between frames count) minus what was allocated when the case began: the scene, the cameras, and whatever
    earlier cases left resident.
    """
    device = scene.device
    baseline = 0
    if device.type == "cuda":
        _free(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

    def frame(i: int) -> None:
        image = source.render(i)
        del image

    for i in range(-warmup, 0):  # the path's last poses, so that a cyclic path (orbit) runs on into pose 0
        frame(i)
        advance()
    timer = _FrameTimer(device)
    times = []
    for i in range(frames):
        times.append(timer.time(lambda i=i: frame(i)))
        advance()
    peak = None
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - baseline) / MIB
    return CaseTiming(tuple(times), peak)


class _FrameTimer:
    """Times one call: CUDA events around it, synchronised after it; ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], None]) -> float:
        """Milliseconds that ``fn`` took (on CUDA: from its first to its last queued work, host launches included)."""
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize(self.device)
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))


def _measure_quality(sources: dict[str, _FrameSource], reference: str, others: Sequence[str], poses: int,
                     advance: Callable[[], None]) -> dict[str, Quality]:
    """PSNR of each of ``others`` against ``reference`` on every pose, in path order (so that cached renderers see
    the path as they would in use); one reference render per pose."""
    scores: dict[str, list[float]] = {name: [] for name in others}
    for i in range(poses):
        ref = sources[reference].render(i)
        for name in others:
            image = sources[name].render(i)
            scores[name].append(psnr(image, ref))
            del image
            advance()
        del ref
    return {name: Quality(min(s), float(np.mean(s))) for name, s in scores.items() if s}


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of ``image`` against ``reference`` (both ``[C, H, W, 3]``, clamped to [0, 1] as displayed).

    Identical images give ``PSNR_CAP_DB`` (the MSE is floored at 1e-10).
    """
    if image.shape != reference.shape:
        raise ValueError(f"psnr: image shape {list(image.shape)} differs from reference {list(reference.shape)}")
    diff = image.float().clamp(0, 1) - reference.float().clamp(0, 1)
    mse = max(float(diff.square().mean()), 10 ** (-PSNR_CAP_DB / 10))
    return float(-10.0 * np.log10(mse))


def _row(config: BenchConfig, scene: BenchScene, path: str, name: str, timing: CaseTiming,
         quality: Quality | None, reference: str | None, offset: tuple[float, float] | None) -> BenchRow:
    times = np.asarray(timing.frame_ms)
    median = float(np.median(times))
    return BenchRow(
        scene=scene.id, gaussians=scene.gaussians, sh_degree=scene.sh_degree, path=path, eyes=config.eyes,
        width=config.width, height=config.height, renderer=name, gpus=1, frames=len(times),
        ms_median=round(median, 4), ms_p90=round(float(np.percentile(times, 90)), 4),
        ms_p99=round(float(np.percentile(times, 99)), 4), fps=round(1000.0 / median, 3),
        peak_extra_mib=None if timing.peak_extra_mib is None else round(timing.peak_extra_mib, 1),
        psnr_min=None if quality is None else round(quality.psnr_min, 3),
        psnr_mean=None if quality is None else round(quality.psnr_mean, 3),
        reference=reference, principal_offset=offset,
    )


# ----- small helpers -------------------------------------------------------------------------------------------
def _total_renders(config: BenchConfig) -> int:
    per_path = []
    for path in config.paths:
        frames = config.frames_for(path)
        timed = len(config.renderers) * (config.warmup_frames + frames)
        others = len([n for n in config.renderers if n != config.reference_name]) if config.quality else 0
        per_path.append(timed + others * min(frames, PATH_FRAMES[path]))
    return len(config.scenes) * sum(per_path)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _command_line() -> str:
    """The process's command line, as a user would type it (``gscache bench ...`` or ``python script.py ...``)."""
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0])
    if program.suffix == ".py":
        try:
            shown = str(program.resolve().relative_to(Path.cwd()))
        except ValueError:
            shown = str(program)
        return shlex.join(["python", shown, *argv[1:]])
    return shlex.join([program.name, *argv[1:]])


def _progress(enabled: bool):  # -> rich.progress.Progress
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=False)
