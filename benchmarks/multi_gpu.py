"""Multi-GPU benchmark of the scheduler: frame-parallel throughput on 1..N GPUs and eye-split stereo latency.

On the GPU machine (issue 8's targets, ``nvidia-h200-x2``):

    python benchmarks/multi_gpu.py --scene guitar-g8 --latency-scene guitar-g12 --gpus 1 2

- frame-parallel, for each GPU count: ``warmup_frames`` then ``timed_frames`` stereo frames of the ``orbit`` path
  submitted with ``2 x gpus x max_inflight`` frames in flight; ``fps`` is the throughput (frames / wall time) and
  ``ms_median`` its frame time (1000 / fps); ``latency_ms_median`` / ``_p90`` / ``_p99`` are the requests'
  latencies. ``speedup`` is against the 1-GPU row (target: >= 1.85 with 2 GPUs on ``guitar-g8``).
- eye-split latency on ``latency_scene``: one request at a time (a headset waiting for its frame); ``ms_*`` are
  latencies and ``fps`` = 1000 / median. The 1-GPU row renders whole frames; the ``gpus >= 2`` row splits the eyes
  (``latency_ratio`` against 1 GPU; target: <= 0.6 on ``guitar-g12``).

Rows follow ``BENCHMARK.md`` with ``gpus`` and ``mode``; the JSON goes to ``out_dir`` (``<date>-<gpu>-multi-gpu-...``).
``--simulate`` replaces the GPUs with simulated workers (a stereo frame takes ``sim_frame_ms``): the CPU test of this
script. Every field of :class:`MultiGpuConfig` is a command-line flag.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from renderer import CacheConfig, PathSpec, Splats, StereoRig, orbit_path  # noqa: E402
from renderer.scheduler import RenderWorker, Scheduler, SchedulerConfig, SimulatedWorker  # noqa: E402

FRAME_PARALLEL_TARGET = 1.85  # 2-GPU throughput over 1 GPU
EYE_SPLIT_TARGET = 0.6  # 2-GPU eye-split latency over 1 GPU


@dataclass(frozen=True)
class MultiGpuConfig:
    """What the benchmark runs.

    Attributes:
        scene: scene id for throughput (``guitar-g8``: see ``BENCHMARK.md``); latency_scene: for eye-split latency
            (None: skip the latency rows).
        gpus: GPU counts to run frame-parallel with (None: 1..all GPUs).
        backend: the render backend; cache: use the frame cache (``renderer`` is then ``<backend>-cache``).
        width, height: per eye; warmup_frames, timed_frames: per case.
        frame_format: ``uint8`` moves a quarter of the bytes of ``float32``.
        transport: ``process`` (one process per GPU) or ``ray``.
        device: ``cuda`` (one worker per GPU) or ``cpu`` (a check of the real path without GPUs: ``gpus`` CPU
            workers of one thread each).
        data_dir: folder of the base scene files (``../shared/data/playcanvas_splats`` when None).
        simulate: simulated workers instead of GPUs (CPU test); sim_frame_ms: their stereo frame time.
        out_dir: where the JSON goes (None: print only); what: file name suffix.
    """

    scene: str = "guitar-g8"
    latency_scene: str | None = "guitar-g12"
    gpus: tuple[int, ...] | None = None
    backend: str = "native"
    cache: bool = False
    width: int = 2064
    height: int = 2208
    warmup_frames: int = 8
    timed_frames: int = 96
    frame_format: str = "uint8"
    transport: str = "process"
    device: str = "cuda"
    data_dir: Path | None = None
    simulate: bool = False
    sim_frame_ms: float = 20.0
    sim_speeds: tuple[float, ...] = (1.0,)
    """Relative speeds of the simulated workers, cycled (e.g. 1 0.5 0.75: unequal GPUs); worker 0 is the 1-GPU case."""
    out_dir: Path | None = ROOT / "benchmarks" / "results"
    what: str = "multi-gpu"


def load_bench_splats(scene_id: str, data_dir: Path | None) -> Splats:
    """The benchmark scene on the CPU (runs in each worker: module level, so that it pickles by name)."""
    from server.bench_scenes import resolve_scene

    return resolve_scene(scene_id, data_dir, device="cpu").splats


@dataclass(frozen=True)
class _Scene:
    id: str
    gaussians: int
    sh_degree: int
    path: PathSpec


def _scene(config: MultiGpuConfig, scene_id: str) -> _Scene:
    if config.simulate:
        spec = PathSpec(center=(0.0, 0.0, 0.0), extent=1.0, width=config.width, height=config.height)
        return _Scene(scene_id, 0, 0, spec)
    from server.bench_scenes import resolve_scene

    scene = resolve_scene(scene_id, config.data_dir, device="cpu")
    return _Scene(scene_id, scene.splats.num_gaussians, scene.splats.sh_degree,
                  scene.path_spec(config.width, config.height))


def _workers(config: MultiGpuConfig, scene_id: str, count: int) -> list:
    if config.simulate:
        ms_per_mpix = config.sim_frame_ms / (2 * config.width * config.height / 1e6)
        return [SimulatedWorker(speed=_sim_speed(config, i), ms_per_mpix=ms_per_mpix, name=f"sim{i}")
                for i in range(count)]
    loader = functools.partial(load_bench_splats, scene_id, config.data_dir)
    cpu = config.device == "cpu"
    return [RenderWorker({scene_id: loader}, device="cpu" if cpu else f"cuda:{i}", backend=config.backend,
                         cache=CacheConfig(enabled=config.cache), name=f"cpu{i}" if cpu else f"cuda{i}",
                         cpu_threads=1 if cpu else None) for i in range(count)]


def _sim_speed(config: MultiGpuConfig, index: int) -> float:
    return config.sim_speeds[index % len(config.sim_speeds)]


def _rigs(scene: _Scene, frames: int) -> list[StereoRig]:
    poses = list(orbit_path(scene.path))
    return [poses[i % len(poses)] for i in range(frames)]


def _percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
    return statistics.median(ordered), at(0.9), at(0.99)


def _scheduler(config: MultiGpuConfig, scene_id: str, gpus: int, mode: str) -> Scheduler:
    cfg = SchedulerConfig(mode=mode, frame_format=config.frame_format)  # type: ignore[arg-type]
    sched = Scheduler(_workers(config, scene_id, gpus), transport=config.transport, config=cfg)
    sched.wait_ready(timeout=600, count=gpus)
    return sched


def run_throughput(config: MultiGpuConfig, scene: _Scene, gpus: int) -> dict:
    """Frame-parallel throughput on ``gpus`` workers (see the module doc)."""
    rigs = _rigs(scene, config.warmup_frames + config.timed_frames)
    with _scheduler(config, scene.id, gpus, "frame-parallel") as sched:
        for f in [sched.submit(r, scene=scene.id) for r in rigs[:config.warmup_frames]]:
            f.result()
        window = 2 * gpus * sched.config.max_inflight
        frames, futures = [], []
        start = time.perf_counter()
        for rig in rigs[config.warmup_frames:]:
            if len(futures) >= window:
                frames.append(futures.pop(0).result())
            futures.append(sched.submit(rig, scene=scene.id))
        frames += [f.result() for f in futures]
        wall = time.perf_counter() - start
    fps = len(frames) / wall
    lat = _percentiles([fr.timings.total_ms for fr in frames])
    row = _row(config, scene, gpus, "frame-parallel", len(frames), (1e3 / fps,) * 3, fps)
    row.update(latency_ms_median=lat[0], latency_ms_p90=lat[1], latency_ms_p99=lat[2],
               used={w: sum(fr.workers[0] == w for fr in frames) for w in sorted({fr.workers[0] for fr in frames})})
    return row


def run_latency(config: MultiGpuConfig, scene: _Scene, gpus: int) -> dict:
    """Closed-loop stereo latency: whole frames on one GPU, eye-split on two or more."""
    mode = "frame-parallel" if gpus == 1 else "eye-split"
    rigs = _rigs(scene, config.warmup_frames + config.timed_frames)
    with _scheduler(config, scene.id, gpus, mode) as sched:
        for rig in rigs[:config.warmup_frames]:
            sched.render(rig, scene=scene.id)
        frames = [sched.render(rig, scene=scene.id) for rig in rigs[config.warmup_frames:]]
    ms = _percentiles([fr.timings.total_ms for fr in frames])
    return _row(config, scene, gpus, mode, len(frames), ms, 1e3 / ms[0])


def _row(config: MultiGpuConfig, scene: _Scene, gpus: int, mode: str, frames: int, ms: Sequence[float],
         fps: float) -> dict:
    renderer = "simulated" if config.simulate else config.backend + ("-cache" if config.cache else "")
    return {"scene": scene.id, "gaussians": scene.gaussians, "sh_degree": scene.sh_degree, "path": "orbit",
            "eyes": 2, "width": config.width, "height": config.height, "renderer": renderer, "gpus": gpus,
            "mode": mode, "frames": frames, "ms_median": ms[0], "ms_p90": ms[1], "ms_p99": ms[2], "fps": fps,
            "peak_extra_mib": None, "psnr_min": None, "psnr_mean": None, "reference": None}


def run(config: MultiGpuConfig, command: str = "") -> dict:
    """Run every case; returns the result object (``BENCHMARK.md`` shape) and writes it when ``out_dir`` is set."""
    from server.bench_results import device_name, git_revision, slug

    on_cpu = config.simulate or config.device == "cpu"
    available = max(config.gpus or (2,)) if on_cpu else torch.cuda.device_count()
    counts = config.gpus or tuple(range(1, available + 1))
    if not counts or max(counts) > available or min(counts) < 1:
        raise ValueError(f"gpus: expected counts in 1..{available} (GPUs here), got {counts}")
    rows = []
    scene = _scene(config, config.scene)
    for n in counts:
        rows.append(run_throughput(config, scene, n))
        rows[-1]["speedup"] = rows[-1]["fps"] / rows[0]["fps"]
        if config.simulate:  # ideal: throughput proportional to the summed speeds of the workers in use
            ideal = sum(_sim_speed(config, i) for i in range(n)) / _sim_speed(config, 0)
            rows[-1].update(ideal_speedup=ideal, of_ideal=rows[-1]["speedup"] / ideal,
                            worker_speeds=[_sim_speed(config, i) for i in range(n)])
    if config.latency_scene is not None and available >= 2:
        lat_scene = scene if config.latency_scene == config.scene else _scene(config, config.latency_scene)
        one, two = run_latency(config, lat_scene, 1), run_latency(config, lat_scene, 2)
        two["latency_ratio"] = two["ms_median"] / one["ms_median"]
        rows += [one, two]
    gpu = "simulated" if config.simulate else device_name(torch.device("cpu" if on_cpu else "cuda"))
    result = {"command": command, "revision": git_revision(), "gpu": gpu, "date": time.strftime("%Y-%m-%d"),
              "rows": rows}
    if config.out_dir is not None:
        out = Path(config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{result['date']}-{slug(gpu)}-{slug(config.what)}-{slug(config.scene)}.json"
        path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        result["written"] = str(path)
        try:
            plot(path.with_suffix(".png"), result)
        except ImportError as err:  # no matplotlib: the JSON stands alone
            print(f"plot skipped: {err}")
    return result


def plot(path: Path, result: dict) -> None:
    """Frame-parallel throughput against the GPU count (with linear scaling from the 1-GPU row) and, where measured,
    the stereo latency of whole frames on one GPU against eye-split on two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    parallel = [r for r in rows if r["mode"] == "frame-parallel" and "speedup" in r]
    latency = [r for r in rows if r not in parallel]
    fig, axes = plt.subplots(1, 2 if latency else 1, figsize=(10 if latency else 5.5, 3.8), squeeze=False)
    ax = axes[0][0]
    gpus = [r["gpus"] for r in parallel]
    ax.plot(gpus, [r["fps"] for r in parallel], "o-", label="measured")
    simulated = all("ideal_speedup" in r for r in parallel)  # unequal simulated workers: ideal = summed speeds
    ideal = [r["ideal_speedup"] if simulated else r["gpus"] for r in parallel]
    ax.plot(gpus, [parallel[0]["fps"] * k for k in ideal], "--", color="grey",
            label="ideal (summed worker speeds)" if simulated else "linear from 1 GPU")
    for r in parallel:
        ax.annotate(f"{r['fps']:.0f} FPS ({r['speedup']:.2f}x)", (r["gpus"], r["fps"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    ax.set_xticks(gpus)
    ax.set_xlabel("GPUs (workers)")
    ax.set_ylabel("stereo frames per second")
    ax.set_title(f"frame-parallel, {parallel[0]['scene']}, {parallel[0]['width']}x{parallel[0]['height']} per eye",
                 fontsize=9)
    ax.legend(fontsize=7)
    if latency:
        ax = axes[0][1]
        labels = [f"{r['gpus']} GPU{'s' if r['gpus'] > 1 else ''}, {r['mode']}" for r in latency]
        bars = ax.bar(labels, [r["ms_median"] for r in latency])
        ax.bar_label(bars, fmt="%.2f ms", fontsize=7)
        ax.set_ylabel("latency, median (ms)")
        ax.set_title(f"one request at a time, {latency[0]['scene']}", fontsize=9)
    fig.suptitle(f"{result['gpu']} - {result['revision'][:12]} - {result['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdicts(result: dict) -> list[str]:
    """The issue's targets against the rows (2-GPU rows only)."""
    lines = []
    for row in result["rows"]:
        if row["mode"] == "frame-parallel" and row["gpus"] == 2 and "speedup" in row:
            ok = row["speedup"] >= FRAME_PARALLEL_TARGET
            lines.append(f"frame-parallel {row['scene']}: {row['speedup']:.2f}x with 2 GPUs "
                         f"({'meets' if ok else 'misses'} >= {FRAME_PARALLEL_TARGET}x)")
        if row["mode"] == "eye-split" and "latency_ratio" in row:
            ok = row["latency_ratio"] <= EYE_SPLIT_TARGET
            lines.append(f"eye-split {row['scene']}: latency {row['latency_ratio']:.2f}x of 1 GPU "
                         f"({'meets' if ok else 'misses'} <= {EYE_SPLIT_TARGET}x)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    config = tyro.cli(MultiGpuConfig, args=argv)
    command = "python benchmarks/multi_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run(config, command.strip())
    for row in result["rows"]:
        print(f"{row['scene']:>12} {row['mode']:>14} gpus={row['gpus']} {row['fps']:8.1f} FPS "
              f"{row['ms_median']:8.2f} ms")
    for line in verdicts(result):
        print(line)
    if "written" in result:
        print(f"wrote {result['written']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
