"""GPU training figures of issue 5, one mode per device call (run through ``benchmarks/train_gpu.sh``).

Modes (each training run is its own ``python -m training`` process under a hard time limit, killed with its process
group when it overruns, so that one call never outlives the device call):

- ``smoke``: lego, a few hundred steps with ``native`` then ``gsplat``: it/s, PSNR, peak memory, Gaussians, and a
  naive 30k-step time at the measured speed.
- ``lego``: the 30k-step comparison on ``nerf_synthetic_lego_200`` (200 held-out views): test PSNR, SSIM, LPIPS,
  Gaussians, wall time per backend. ``--backends`` picks the runs of this call; ``--merge DIR`` adds the rows of an
  earlier call's JSON (carried back in), so that the two backends can run in two device calls.
- ``snowmiku``: held-out PSNR on ``snowmiku_plush_mit`` (``heldout``: the default 3DGS settings with native) and the
  bundled default scene (``scene``: MCMC with a Gaussian cap so that the SH-3 ``.ply`` stays under 10 MB), whose
  ``.ply`` is copied to the output folder.
- ``resume``: lego, N steps uninterrupted, and the same run killed with SIGKILL after half its steps (while a
  checkpoint is being written when the timing allows), checked for partial files, resumed with ``--resume`` and
  compared.
- ``seeds``: lego with more seeds per backend (``--seeds 1,2``), plus held-out snowmiku runs (``--parts snowmiku``,
  ``--snowmiku-backends gsplat``), all side by side on the GPU: the PSNR spread across seeds (``--merge DIR`` adds
  the isolated ``lego`` rows as seed 0). Wall times of side-by-side runs are not speed figures.

Output (at most 8 files): ``<date>-<gpu>-train-<mode>.json`` (BENCHMARK.md shape: command, revision, gpu, date,
rows), a ``.png`` plot with the same stem, ``train-<mode>.log`` (every run's output) and, for ``snowmiku``,
``snowmiku.ply``. Run folders (checkpoints) stay in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LEGO = "nerf_synthetic_lego_200"
SNOWMIKU = "snowmiku_plush_mit"
SCENE_LIMIT_BYTES = 10_000_000
PLY_BYTES_PER_GAUSSIAN_SH3 = 62 * 4  # INRIA layout: xyz, normals, 3 + 45 SH, opacity, 3 scales, 4 rotation floats
STEP_LINE = re.compile(r"^step (\d+) loss ([\d.eE+-]+) PSNR ([\d.eE+-]+|inf) ([\d,]+) Gaussians ([\d.]+) it/s")
_START = float(os.environ.get("TRAIN_CALL_START", time.time()))


# ----- running one training process ----------------------------------------------------------------------------
def remaining(args) -> float:
    """Seconds left of this call's budget."""
    return args.call_budget - (time.time() - _START)


def train_args(args, steps: int, preset: str = "default") -> list[str]:
    """The trainer flags every run of a mode shares."""
    out = ["--preset", preset, "--steps", str(steps), "--eval-every", str(steps), "--log-every", str(args.log_every),
           "--checkpoint-every", str(args.checkpoint_every or steps), "--save-images", "2"]
    if args.device != "auto":
        out += ["--device", args.device]
    return out + shlex.split(args.extra)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "wb")  # noqa: SIM115 - closed by wait()
    handle.write(f"$ {shlex.join(cmd)}\n".encode())
    handle.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    proc._log_handle = handle  # type: ignore[attr-defined]
    return proc


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the run's whole process group (the trainer and any compiler it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def wait(proc: subprocess.Popen, timeout: float) -> tuple[int, bool]:
    """``(exit code, timed out)``; a run over ``timeout`` seconds is killed."""
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
        timed_out = False
    except subprocess.TimeoutExpired:
        kill(proc)
        rc, timed_out = -9, True
    proc._log_handle.close()  # type: ignore[attr-defined]
    return rc, timed_out


def run_training(args, name: str, data: Path, run_dir: Path, backend: str, flags: list[str],
                 resume: bool = False) -> dict[str, Any]:
    """One ``python -m training`` run under the time limit; its row (from ``metrics.json``, or from the log when it
    did not finish)."""
    cmd = [sys.executable, "-m", "training", str(data), "--out", str(run_dir), "--backend", backend, *flags]
    if resume:
        cmd.append("--resume")
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    log = Path(args.work_dir) / f"{name}.log"
    limit = min(args.timeout, remaining(args) - 10)
    print(f"=== {name}: {backend} ({limit:.0f} s at most) {time.strftime('%T')}", flush=True)
    t0 = time.time()
    proc = start(cmd, log)
    rc, timed_out = wait(proc, limit)
    row = row_from_run(run_dir, log, data.name, backend)
    row.update(run=name, process_s=round(time.time() - t0, 1), exit_code=rc, timed_out=timed_out,
               status="ok" if rc == 0 and row.get("psnr") is not None else ("timeout" if timed_out else "failed"))
    append_log(args, name, log)
    print(f"    {name}: {summary(row)}", flush=True)
    if row["status"] != "ok" and log.is_file():
        print("    " + "\n    ".join(log.read_text(errors="replace").splitlines()[-6:]), flush=True)
    return row


def row_from_run(run_dir: Path, log: Path, dataset: str, backend: str) -> dict[str, Any]:
    """The BENCHMARK.md training row of a run: from ``metrics.json`` when it finished, else its last logged step."""
    row: dict[str, Any] = {"dataset": dataset, "backend": backend}
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        ev, timing = m.get("eval") or {}, m.get("timing_this_call") or {}
        row.update(steps=m["step"], psnr=ev.get("psnr"), ssim=ev.get("ssim"), lpips=ev.get("lpips"),
                   gaussians=m["num_gaussians"], wall_s=round(m["train_seconds"], 2),
                   loop_s=round(timing.get("loop_s", float("nan")), 2), eval_s=round(timing.get("eval_s", 0.0), 2),
                   checkpoint_s=round(timing.get("checkpoint_s", 0.0), 2), it_per_s=round(m["it_per_s"], 2),
                   peak_memory_mib=None if m.get("peak_memory_mib") is None else round(m["peak_memory_mib"], 1),
                   gpu=m.get("gpu"), eval_split=ev.get("split"), eval_frames=ev.get("frames"),
                   train_images=m.get("train_images"), resolved_backend=m.get("backend"))
        return row
    last = last_step(log)
    if last is not None:
        row.update(steps=last["step"], psnr=None, train_psnr_last=last["psnr"], gaussians=last["gaussians"],
                   it_per_s=last["it_per_s"])
    return row


def last_step(log: Path) -> dict[str, Any] | None:
    """The last ``step N loss .. PSNR .. Gaussians .. it/s`` line of a run's log."""
    found = None
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            m = STEP_LINE.match(line.strip())
            if m:
                found = {"step": int(m[1]), "loss": float(m[2]), "psnr": float(m[3]),
                         "gaussians": int(m[4].replace(",", "")), "it_per_s": float(m[5])}
    return found


def append_log(args, name: str, log: Path) -> None:
    with open(Path(args.out_dir) / f"train-{args.mode}.log", "a") as out:
        out.write(f"\n===== {name} =====\n")
        if log.is_file():
            out.write(log.read_text(errors="replace"))


def summary(row: dict[str, Any]) -> str:
    keys = ("status", "steps", "psnr", "ssim", "gaussians", "wall_s", "loop_s", "it_per_s", "peak_memory_mib")
    return ", ".join(f"{k} {row.get(k)}" for k in keys if k in row)


_BUILDS = {
    "native": "import torch; from renderer.native.build import load_native; load_native(torch.device('cuda'))",
    "gsplat": "import gsplat.cuda._backend as b; assert b._C is not None, 'gsplat: no CUDA extension'",
}


def prebuild(args, needs: set[str]) -> None:
    """Build (or load from the caches) the CUDA extensions the runs need, in parallel, before any run is timed: the
    native kernels and gsplat's (the gsplat backend and MCMC's relocation use them)."""
    if args.device == "cpu" or not needs:
        return
    procs = {}
    for name in sorted(needs):
        print(f"=== prebuild {name} {time.strftime('%T')}", flush=True)
        procs[name] = (start([sys.executable, "-c", _BUILDS[name]], Path(args.work_dir) / f"build-{name}.log"),
                       time.time())
    for name, (proc, t0) in procs.items():
        rc, timed_out = wait(proc, min(args.timeout, remaining(args) - 30))
        print(f"    prebuild {name}: rc {rc}{' (timed out)' if timed_out else ''}, {time.time() - t0:.0f} s",
              flush=True)
        append_log(args, f"build-{name}", Path(args.work_dir) / f"build-{name}.log")


def needs_for(backends: list[str], mcmc: bool = False) -> set[str]:
    out = {"native" for b in backends if b in ("native", "auto")}
    out |= {"gsplat" for b in backends if b.startswith("gsplat")}
    return out | ({"gsplat"} if mcmc else set())


# ----- result files ----------------------------------------------------------------------------------------------
def gpu_name() -> str:
    """The GPU model, or the CPU model on a machine without CUDA (``server.bench_results.device_name``)."""
    import torch

    from server.bench_results import device_name

    return device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def revision() -> str:
    rev = os.environ.get("GSCACHE_REVISION")
    if rev:
        return rev
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def merge_rows(args, what: str, rows: list[dict[str, Any]], key) -> list[dict[str, Any]]:
    """``rows`` plus the rows of earlier calls' ``*-train-<what>.json`` under ``--merge`` that this call did not
    redo (same ``key``)."""
    if not args.merge:
        return rows
    mine = {key(r) for r in rows}
    merged = list(rows)
    for path in sorted(Path(args.merge).rglob(f"*-train-{what}.json")):
        for old in json.loads(path.read_text()).get("rows", []):
            if key(old) not in mine:
                merged.append({**old, "merged_from": path.name})
                mine.add(key(old))
    return merged


def write_result(args, what: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    gpu = gpu_name()
    date = dt.date.today().isoformat()
    stem = f"{date}-{slug(gpu)}-train-{what}"
    result = {"command": f"bash benchmarks/train_gpu.sh {shlex.join(sys.argv[1:])}", "revision": revision(),
              "gpu": gpu, "date": date, "rows": rows, **(extra or {})}
    path = Path(args.out_dir) / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2, allow_nan=False, default=str) + "\n")
    try:
        plot(path.with_suffix(".png"), what, gpu, rows, extra or {})
    except Exception as e:  # noqa: BLE001 - a missing matplotlib must not lose the JSON
        print(f"plot skipped: {e}")
    print(f"wrote {path}")
    return path


def _clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN -> None (JSON without NaN)."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]


def plot(path: Path, what: str, gpu: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    if what == "seeds":
        plot_seeds(path, gpu, rows)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = {LEGO: "lego", SNOWMIKU: "snowmiku"}
    labels = [f"{short.get(r.get('dataset'), r.get('dataset'))}\n{r.get('backend')}"
              f"{' ' + r['part'] if r.get('part') else ''}{' ' + r['run'] if what == 'resume' else ''}"
              f"{' seed ' + str(r.get('seed')) if what == 'seeds' else ''}" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (("psnr", "test PSNR (dB)"), ("wall_s", "training wall time (s)"), ("it_per_s", "it/s"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [r.get(key) or 0.0 for r in rows]
        bars = ax.bar(range(len(rows)), values, color=["tab:blue" if "native" in str(r.get("backend")) else
                                                       "tab:orange" for r in rows])
        ax.bar_label(bars, fmt="%.2f" if key == "psnr" else "%.1f", fontsize=8)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_title(title)
    note = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in (extra.get("comparison") or {}).items() if not isinstance(v, dict))
    fig.suptitle(f"gscache train ({what}) on {gpu}" + (f"\n{note}" if note else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----- modes -----------------------------------------------------------------------------------------------------
def plot_seeds(path: Path, gpu: str, rows: list[dict[str, Any]]) -> None:
    """Lego test PSNR per seed and backend, and the per-seed native-minus-gsplat difference against the 0.2 dB
    band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lego = [r for r in rows if r.get("dataset") == LEGO and r.get("status") == "ok"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    by: dict[str, dict[int, float]] = {}
    for r in lego:
        by.setdefault(r["backend"], {})[int(r["seed"])] = r["psnr"]
    for backend, color in (("native", "tab:blue"), ("gsplat", "tab:orange")):
        seeds = sorted(by.get(backend, {}))
        values = [by[backend][s] for s in seeds]
        if values:
            left.plot(seeds, values, "o-", color=color, label=f"{backend} (mean {sum(values) / len(values):.2f})")
            left.axhline(sum(values) / len(values), color=color, ls="--", lw=0.8)
    left.set_xticks(sorted({int(r["seed"]) for r in lego}))
    left.set_xlabel("seed")
    left.set_ylabel("lego test PSNR (dB), 30k steps")
    left.legend(fontsize=8)
    paired = sorted(set(by.get("native", {})) & set(by.get("gsplat", {})))
    diffs = [by["native"][s] - by["gsplat"][s] for s in paired]
    bars = right.bar(paired, diffs, color=["tab:blue" if d >= 0 else "tab:orange" for d in diffs])
    right.bar_label(bars, fmt="%+.2f", fontsize=8)
    right.axhspan(-0.2, 0.2, color="0.9", zorder=0, label="within 0.2 dB")
    if diffs:
        right.axhline(sum(diffs) / len(diffs), color="k", ls="--", lw=0.8, label=f"mean {sum(diffs) / len(diffs):+.2f}")
    right.set_xlabel("seed")
    right.set_ylabel("native - gsplat backend (dB)")
    right.legend(fontsize=8)
    snow = [r for r in rows if r.get("dataset") == SNOWMIKU and r.get("status") == "ok"]
    extra = "; ".join(f"snowmiku {r['backend']} {r['psnr']:.2f} dB" for r in snow)
    fig.suptitle(f"gscache train, lego over seeds, both backends ({gpu})" + (f"\n{extra}" if extra else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dataset_path(args, name: str) -> Path:
    for base in (Path(args.data_dir), ROOT / ".traindata", ROOT.parent / "shared" / "data"):
        if (base / name).is_dir():
            return (base / name).resolve()
    raise SystemExit(f"dataset {name} not found under {args.data_dir}, .traindata/ or ../shared/data/")


def mode_smoke(args) -> int:
    data = dataset_path(args, LEGO)
    prebuild(args, needs_for(args.backends))
    rows = []
    for backend in args.backends:
        row = run_training(args, f"smoke-{backend}", data, Path(args.work_dir) / f"smoke-{backend}", backend,
                           train_args(args, args.steps))
        if row.get("it_per_s"):
            row["naive_30k_s"] = round(30_000 / row["it_per_s"], 1)  # at this (pre-densification) speed
        rows.append(row)
    write_result(args, "smoke", _clean(rows), {"note": "naive_30k_s = 30000 / it_per_s at the smoke's Gaussian count; "
                                               "densification from step 500 grows the count, so expect more"})
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def mode_lego(args) -> int:
    data = dataset_path(args, LEGO)
    prebuild(args, needs_for(args.backends))
    rows = [run_training(args, f"lego-{b}", data, Path(args.work_dir) / f"lego-{b}", b, train_args(args, args.steps))
            for b in args.backends]
    rows = merge_rows(args, "lego", _clean(rows), key=lambda r: r.get("backend"))
    write_result(args, "lego", rows, {"comparison": compare(rows, "native", "gsplat")})
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


def compare(rows: list[dict[str, Any]], ours: str, peer: str) -> dict[str, Any]:
    """PSNR difference and wall-time ratio of ``ours`` against ``peer`` with the issue's targets."""
    by = {r.get("backend"): r for r in rows if r.get("status") == "ok"}
    if ours not in by or peer not in by:
        return {"missing": sorted({ours, peer} - set(by))}
    a, b = by[ours], by[peer]
    diff = a["psnr"] - b["psnr"]
    ratio = a["wall_s"] / b["wall_s"]
    loop_ratio = a["loop_s"] / b["loop_s"] if a.get("loop_s") and b.get("loop_s") else None
    return {"psnr_diff_db": diff, "ssim_diff": a["ssim"] - b["ssim"], "wall_ratio": ratio, "loop_ratio": loop_ratio,
            "psnr_within_0.2db": abs(diff) <= 0.2, "native_not_worse_by_0.2db": diff >= -0.2,
            "wall_ratio_at_most_0.8": ratio <= 0.8}


def mode_seeds(args) -> int:
    """Lego (and snowmiku held-out) PSNR over several seeds per backend, the runs side by side on one GPU.

    The runs share the GPU, so their wall times say nothing about speed (the ``lego`` mode times each backend
    alone); what this measures is the run-to-run spread of the test PSNR that a single-seed comparison hides.
    """
    lego = dataset_path(args, LEGO)
    prebuild(args, needs_for(args.backends))
    jobs = [(f"lego-{b}-seed{s}", lego, b, s) for s in args.seeds for b in args.backends]
    if "snowmiku" in args.parts:
        jobs += [(f"snowmiku-{b}-seed0", dataset_path(args, SNOWMIKU), b, 0) for b in args.snowmiku_backends]
    limit = min(args.timeout, remaining(args) - 15)
    print(f"=== {len(jobs)} runs side by side ({limit:.0f} s at most) {time.strftime('%T')}", flush=True)
    procs = []
    for name, data, backend, seed in jobs:
        run_dir = Path(args.work_dir) / name
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "training", str(data), "--out", str(run_dir), "--backend", backend,
               *train_args(args, args.steps), "--seed", str(seed)]
        procs.append((name, data, backend, seed, run_dir, start(cmd, Path(args.work_dir) / f"{name}.log")))
    t0 = time.time()
    rows = []
    for name, data, backend, seed, run_dir, proc in procs:
        rc, timed_out = wait(proc, limit - (time.time() - t0))
        log = Path(args.work_dir) / f"{name}.log"
        row = row_from_run(run_dir, log, data.name, backend)
        row.update(run=name, seed=seed, side_by_side=len(procs), exit_code=rc, timed_out=timed_out,
                   status="ok" if rc == 0 and row.get("psnr") is not None else ("timeout" if timed_out else "failed"))
        append_log(args, name, log)
        print(f"    {name}: {summary(row)}", flush=True)
        rows.append(row)
    rows += isolated_lego_rows(args)
    write_result(args, "seeds", _clean(rows), {"spread": seed_spread(rows), "note": (
        "runs side by side on one GPU: wall times are not speed figures (see the lego result); rows with "
        "isolated=true come from the lego result named in merged_from")})
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


def isolated_lego_rows(args) -> list[dict[str, Any]]:
    """The single-seed lego rows of earlier calls (``--merge``), counted as seed 0 of each backend."""
    if not args.merge:
        return []
    rows = []
    for path in sorted(Path(args.merge).glob("*-train-lego.json")):
        for old in json.loads(path.read_text()).get("rows", []):
            if old.get("status") == "ok" and old.get("steps") == args.steps:
                rows.append({**old, "seed": 0, "isolated": True, "merged_from": path.name})
    return rows


def seed_spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset and backend: the seeds' test PSNR (mean, sample std, min, max) and mean SSIM; for lego, the
    native-minus-gsplat difference of the means."""
    import statistics

    out: dict[str, Any] = {}
    for row in rows:
        if row.get("status") == "ok":
            out.setdefault(f"{row['dataset']}/{row['backend']}", []).append(row)
    spread = {}
    for key, group in sorted(out.items()):
        psnr = [r["psnr"] for r in group]
        spread[key] = {"runs": len(group), "psnr_mean": statistics.fmean(psnr),
                       "psnr_std": statistics.stdev(psnr) if len(psnr) > 1 else None,
                       "psnr_min": min(psnr), "psnr_max": max(psnr),
                       "ssim_mean": statistics.fmean(r["ssim"] for r in group)}
    a, b = spread.get(f"{LEGO}/native"), spread.get(f"{LEGO}/gsplat")
    if a and b:
        spread["lego_native_minus_gsplat_db"] = a["psnr_mean"] - b["psnr_mean"]
    return spread


def mode_snowmiku(args) -> int:
    data = dataset_path(args, SNOWMIKU)
    prebuild(args, needs_for(args.backends, mcmc="scene" in args.parts))
    rows = []
    if "heldout" in args.parts:
        row = run_training(args, "snowmiku-heldout", data, Path(args.work_dir) / "snowmiku-heldout", args.backends[0],
                           train_args(args, args.steps))
        rows.append({**row, "part": "heldout"})
    if "scene" in args.parts:
        run_dir = Path(args.work_dir) / "snowmiku-scene"
        flags = [*train_args(args, args.scene_steps, preset="mcmc"), "strategy:mcmc", "--strategy.cap-max",
                 str(args.cap)]
        row = run_training(args, "snowmiku-scene", data, run_dir, args.backends[0], flags)
        ply = run_dir / "scene.ply"
        if ply.is_file():
            row["ply_bytes"] = ply.stat().st_size
            row["ply_under_10mb"] = ply.stat().st_size <= SCENE_LIMIT_BYTES
            shutil.copyfile(ply, Path(args.out_dir) / "snowmiku.ply")
        row["command"] = shlex.join(["gscache", "train", SNOWMIKU, "--out", "RUN", "--backend", args.backends[0],
                                     *flags])
        rows.append({**row, "part": "scene"})
    rows = merge_rows(args, "snowmiku", _clean(rows), key=lambda r: r.get("part"))
    write_result(args, "snowmiku", rows)
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


def mode_resume(args) -> int:
    from training.atomic import stale_temp_files

    data = dataset_path(args, LEGO)
    backend = args.backends[0]
    prebuild(args, needs_for([backend]))
    steps, every = args.steps, args.checkpoint_every or max(args.steps // 8, 1)
    args.checkpoint_every = every
    flags = train_args(args, steps)
    work = Path(args.work_dir)
    straight = run_training(args, "resume-straight", data, work / "resume-straight", backend, flags)

    run_dir = work / "resume-killed"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    log = work / "resume-killed.log"
    cmd = [sys.executable, "-m", "training", str(data), "--out", str(run_dir), "--backend", backend, *flags]
    print(f"=== resume-killed: {backend}, SIGKILL after step {steps // 2} {time.strftime('%T')}", flush=True)
    proc = start(cmd, log)
    kill_info = watch_and_kill(proc, run_dir, log, steps // 2, every, min(args.timeout, remaining(args) - 60))
    proc._log_handle.close()  # type: ignore[attr-defined]
    after_kill = inspect_run_dir(run_dir)
    print(f"    killed: {kill_info}; files: {after_kill}", flush=True)
    append_log(args, "resume-killed", log)

    resumed = run_training(args, "resume-resumed", data, run_dir, backend, flags, resume=True)
    after_resume = inspect_run_dir(run_dir)
    row = {"dataset": LEGO, "backend": backend, "steps": steps, "checkpoint_every": every,
           "psnr_uninterrupted": straight.get("psnr"), "psnr_resumed": resumed.get("psnr"),
           "ssim_uninterrupted": straight.get("ssim"), "ssim_resumed": resumed.get("ssim"),
           "gaussians_uninterrupted": straight.get("gaussians"), "gaussians_resumed": resumed.get("gaussians"),
           "kill": kill_info, "after_kill": after_kill, "after_resume": after_resume,
           "no_partial_files_after_resume": (not stale_temp_files(run_dir) and after_resume["complete"]
                                             and after_resume["finished"])}
    if straight.get("psnr") is not None and resumed.get("psnr") is not None:
        row["psnr_diff_db"] = resumed["psnr"] - straight["psnr"]
        row["within_0.1db"] = abs(row["psnr_diff_db"]) <= 0.1
    rows = _clean([{**straight, "run": "uninterrupted"}, {**resumed, "run": "killed+resumed"}])
    write_result(args, "resume", rows, {"comparison": row})
    print(json.dumps(row, indent=1, default=str))
    return 0 if row.get("within_0.1db") and row["no_partial_files_after_resume"] else 1


def watch_and_kill(proc: subprocess.Popen, run_dir: Path, log: Path, after_step: int, every: int,
                   timeout: float) -> dict[str, Any]:
    """SIGKILL ``proc`` once it has logged ``after_step`` steps: while a checkpoint temporary exists if one shows up
    within the next checkpoint interval (a write in progress), else at the end of that interval."""
    t0, step, seen_at = time.time(), 0, None
    offset = 0
    while proc.poll() is None and time.time() - t0 < timeout:
        if step < after_step + every:
            if log.is_file():
                with open(log, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                cut = chunk.rfind(b"\n") + 1
                offset += cut
                for line in chunk[:cut].decode(errors="replace").splitlines():
                    m = STEP_LINE.match(line.strip())
                    if m:
                        step = int(m[1])
        if step >= after_step:
            temps = [p.name for p in run_dir.glob(".checkpoint.pt.*.tmp")]
            if temps or step >= after_step + every:
                seen_at = step
                kill(proc)
                return {"killed_after_logged_step": seen_at, "during_checkpoint_write": bool(temps),
                        "temporaries_seen": temps, "seconds": round(time.time() - t0, 1)}
            time.sleep(0.002)
        else:
            time.sleep(0.01)
    if proc.poll() is None:
        kill(proc)
        return {"killed_after_logged_step": step, "during_checkpoint_write": False, "timeout": True}
    return {"killed_after_logged_step": None, "exited_before_kill": proc.returncode}


def inspect_run_dir(run_dir: Path) -> dict[str, Any]:
    """Which files a run folder holds and whether each finished file reads back whole."""
    from training.atomic import stale_temp_files
    from training.checkpoint import load_checkpoint

    out: dict[str, Any] = {"temporaries": [str(p.relative_to(run_dir)) for p in stale_temp_files(run_dir)]}
    bad = []
    if (run_dir / "checkpoint.pt").is_file():
        try:
            out["checkpoint_step"] = load_checkpoint(run_dir / "checkpoint.pt").step
        except Exception as e:  # noqa: BLE001
            bad.append(f"checkpoint.pt: {e}")
    for name in ("config.json", "metrics.json"):
        if (run_dir / name).is_file():
            try:
                json.loads((run_dir / name).read_text())
            except ValueError as e:
                bad.append(f"{name}: {e}")
    if (run_dir / "scene.ply").is_file():
        try:
            from data import load_scene

            out["scene_gaussians"] = len(load_scene(run_dir / "scene.ply"))
        except Exception as e:  # noqa: BLE001
            bad.append(f"scene.ply: {e}")
    pngs = sorted((run_dir / "renders").rglob("*.png")) if (run_dir / "renders").is_dir() else []
    from PIL import Image

    for png in pngs:
        try:
            with Image.open(png) as im:
                im.load()
        except Exception as e:  # noqa: BLE001
            bad.append(f"{png.name}: {e}")
    out.update(pngs=len(pngs), unreadable=bad, complete=not bad,
               finished=(run_dir / "scene.ply").is_file() and (run_dir / "metrics.json").is_file())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("smoke", "lego", "snowmiku", "resume", "seeds"))
    parser.add_argument("--backends", default=None, help="comma-separated (smoke/lego: native,gsplat; else native)")
    parser.add_argument("--steps", type=int, default=None, help="smoke 500, lego/snowmiku 30000, resume 4000")
    parser.add_argument("--parts", default="heldout,scene", help="snowmiku: heldout, scene or both; seeds: "
                        "'snowmiku' adds a held-out snowmiku run per --snowmiku-backends")
    parser.add_argument("--seeds", default="1,2", help="seeds: the lego seeds per backend")
    parser.add_argument("--snowmiku-backends", default="gsplat", help="seeds: backends of the snowmiku runs")
    parser.add_argument("--scene-steps", type=int, default=30_000, help="snowmiku scene: steps")
    parser.add_argument("--cap", type=int, default=38_000, help="snowmiku scene: MCMC Gaussian cap (SH 3: "
                                                                "248 bytes each, 38k = 9.4 MB)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="default: lego/snowmiku 10000, smoke only the last step, resume steps/8")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--extra", default=os.environ.get("TRAIN_EXTRA", ""), help="more trainer flags")
    parser.add_argument("--data-dir", default=os.environ.get("TRAIN_DATA_DIR", str(ROOT / ".traindata")))
    parser.add_argument("--out-dir", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")))
    parser.add_argument("--work-dir", default=str(ROOT / "build" / "train-runs"))
    parser.add_argument("--merge", default=os.environ.get("TRAIN_MERGE"), help="folder with earlier calls' JSON")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("TRAIN_TIMEOUT", 560)),
                        help="seconds one training process may take")
    parser.add_argument("--call-budget", type=float, default=float(os.environ.get("TRAIN_CALL_BUDGET", 585)),
                        help="seconds this whole call may take (counted from TRAIN_CALL_START)")
    args = parser.parse_args(argv)
    default_backends = "native,gsplat" if args.mode in ("smoke", "lego", "seeds") else "native"
    args.backends = (args.backends or default_backends).split(",")
    args.parts = args.parts.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.snowmiku_backends = [b for b in args.snowmiku_backends.split(",") if b]
    if args.steps is None:
        args.steps = {"smoke": 500, "resume": 4000}.get(args.mode, 30_000)
    if args.checkpoint_every is None and args.mode in ("lego", "snowmiku", "seeds"):
        args.checkpoint_every = 10_000
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    return {"smoke": mode_smoke, "lego": mode_lego, "snowmiku": mode_snowmiku, "resume": mode_resume,
            "seeds": mode_seeds}[args.mode](args)


if __name__ == "__main__":
    raise SystemExit(main())
