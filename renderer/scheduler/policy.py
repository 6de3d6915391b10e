"""The scheduler's policy, free of any transport: pure functions and small state machines, tested on their own.

- :class:`CostModel`: running (exponential) averages of each worker's render time per workload, with priors for
  workloads a worker has not rendered yet.
- :func:`pick_earliest_finish`: the worker predicted to finish a job first.
- :func:`choose_mode`: frame-parallel or eye-split, from measured costs and the demand.
- :class:`ElasticController`: add or release a worker to hold a target rate, with hysteresis.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .types import CostConfig, ElasticConfig, Mode


@dataclass(frozen=True, order=True)
class CostKey:
    """A workload: scene, resolution and cameras per job (2 for a stereo frame, 1 for one eye)."""

    scene: str
    width: int
    height: int
    cameras: int

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.cameras


class CostModel:
    """Running estimates of render time (ms) per (worker, :class:`CostKey`).

    ``predict`` answers for any pair: the worker's own average where it has one; else the fastest other worker's
    average for that workload scaled by this worker's relative speed (its ms per pixel against theirs, where both
    are known), which is optimistic on purpose so that a new worker gets tried; else the worker's ms per pixel
    times the pixels; else ``prior_ms``.
    """

    def __init__(self, config: CostConfig | None = None) -> None:
        self.config = config or CostConfig()
        self._ms: dict[tuple[str, CostKey], float] = {}
        self._samples: dict[tuple[str, CostKey], int] = {}
        self._ms_per_pixel: dict[str, float] = {}

    def observe(self, worker: str, key: CostKey, ms: float) -> None:
        """Fold one measured render time into the averages."""
        a = self.config.smoothing
        k = (worker, key)
        old = self._ms.get(k)
        self._ms[k] = ms if old is None else (1 - a) * old + a * ms
        self._samples[k] = self._samples.get(k, 0) + 1
        per_pixel = ms / max(key.pixels, 1)
        old_pp = self._ms_per_pixel.get(worker)
        self._ms_per_pixel[worker] = per_pixel if old_pp is None else (1 - a) * old_pp + a * per_pixel

    def measured(self, worker: str, key: CostKey) -> float | None:
        """The worker's own average for ``key`` (None when it has not rendered it)."""
        return self._ms.get((worker, key))

    def samples(self, worker: str, key: CostKey) -> int:
        return self._samples.get((worker, key), 0)

    def known(self, key: CostKey) -> bool:
        """Whether any worker has rendered ``key``."""
        return any(k == key for _, k in self._ms)

    def predict(self, worker: str, key: CostKey) -> float:
        """Predicted render time in ms of ``key`` on ``worker`` (see the class doc)."""
        own = self._ms.get((worker, key))
        if own is not None:
            return own
        others = [(w, ms) for (w, k), ms in self._ms.items() if k == key]
        mine = self._ms_per_pixel.get(worker)
        if others:
            w, ms = min(others, key=lambda item: item[1])
            theirs = self._ms_per_pixel.get(w)
            return ms * (mine / theirs) if mine is not None and theirs else ms
        if mine is not None:
            return mine * key.pixels
        return self.config.prior_ms

    def forget(self, worker: str) -> None:
        """Drop a worker's estimates (it was replaced by different hardware)."""
        for k in [k for k in self._ms if k[0] == worker]:
            del self._ms[k]
            self._samples.pop(k, None)
        self._ms_per_pixel.pop(worker, None)


# ----- assignment ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerLoad:
    """What the assignment needs to know of one candidate worker.

    Attributes:
        name: the worker; free_at: when it is predicted to have finished its queued jobs (same clock as ``now``);
        job_ms: its predicted render time of the job; in_flight: jobs queued on it; has_slot: whether it may take
            one more now.
    """

    name: str
    free_at: float
    job_ms: float
    in_flight: int
    has_slot: bool


@dataclass(frozen=True)
class Assignment:
    """The worker predicted to finish first, its predicted finish time, and whether it can take the job now."""

    worker: str
    finish_at: float
    now: bool


def pick_earliest_finish(loads: Sequence[WorkerLoad], now: float) -> Assignment | None:
    """The worker predicted to finish the job first: ``max(now, free_at) + job_ms``, ties to the less loaded.

    When that worker has no free slot the job should wait for it rather than go to a slower worker
    (``Assignment.now`` is False): that is what keeps each worker's share proportional to its speed.
    Returns None when there is no candidate.
    """
    if not loads:
        return None

    def finish(load: WorkerLoad) -> float:
        return max(now, load.free_at) + load.job_ms / 1e3

    best = min(loads, key=lambda load: (finish(load), load.in_flight, load.name))
    return Assignment(best.name, finish(best), best.has_slot)


# ----- mode choice --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModeDecision:
    """The mode for a stereo workload and why.

    Attributes:
        mode: the choice; reason: in words.
        frame_latency_ms, split_latency_ms: predicted latency of one frame in each mode (None where unknown).
        frame_capacity_fps, split_capacity_fps: predicted throughput of all workers in each mode.
    """

    mode: Mode
    reason: str
    frame_latency_ms: float | None = None
    split_latency_ms: float | None = None
    frame_capacity_fps: float | None = None
    split_capacity_fps: float | None = None


def choose_mode(stereo_ms: Sequence[float], eye_ms: Sequence[float], demand_fps: float | None = None,
                concurrency: int | None = None, gain: float = 0.1, split_overhead_ms: float = 0.0) -> ModeDecision:
    """Frame-parallel or eye-split for a stereo workload, from measured costs.

    Args:
        stereo_ms: each worker's render time of a whole stereo frame (W workers).
        eye_ms: each worker's render time of one eye (same W workers, same order).
        demand_fps: frames per second the workers must sustain (the elastic target); None: none set.
        concurrency: frames in flight with this one (None: unknown). Eye-split takes two workers per frame: with
            more frames in flight than pairs of workers they would queue, and frame-parallel serves them sooner.
        gain: eye-split must cut the latency by at least this fraction (it costs more GPU time per frame).
        split_overhead_ms: the extra cost of gathering two halves (measured transfer time).

    Eye-split renders one frame on the two fastest workers at once (latency: the slower eye); it needs two eyes of
    work per frame, so its capacity is lower wherever a stereo frame costs less than two eyes.
    """
    workers = len(stereo_ms)
    if workers < 2 or len(eye_ms) != workers:
        return ModeDecision("frame-parallel", "fewer than two workers")
    frame_latency = min(stereo_ms)
    frame_capacity = sum(1e3 / ms for ms in stereo_ms)
    fastest = sorted(eye_ms)[:2]
    split_latency = max(fastest) + split_overhead_ms
    split_capacity = sum(1e3 / ms for ms in eye_ms) / 2
    numbers = dict(frame_latency_ms=frame_latency, split_latency_ms=split_latency,
                   frame_capacity_fps=frame_capacity, split_capacity_fps=split_capacity)
    if split_latency > (1 - gain) * frame_latency:
        return ModeDecision("frame-parallel", f"eye-split would not cut latency by {gain:.0%} "
                            f"({split_latency:.2f} vs {frame_latency:.2f} ms)", **numbers)
    if demand_fps is not None and split_capacity < demand_fps:
        return ModeDecision("frame-parallel", f"eye-split capacity {split_capacity:.1f} FPS is under the demand "
                            f"{demand_fps:.1f} FPS", **numbers)
    if concurrency is not None and concurrency > workers // 2:
        return ModeDecision("frame-parallel", f"{concurrency} frames in flight on {workers} workers: eye-split would "
                            "queue them", **numbers)
    return ModeDecision("eye-split", f"eye-split latency {split_latency:.2f} ms vs {frame_latency:.2f} ms",
                        **numbers)


# ----- elastic controller -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ElasticSample:
    """One observation for the elastic controller.

    Attributes:
        time: seconds (monotonic); worker_fps: each active, ready worker's rate on the current workload (frames
            per second, from its measured frame time); starting: workers started and not yet ready;
        standby: workers of the pool that could be added.
    """

    time: float
    worker_fps: dict[str, float]
    starting: int
    standby: int

    @property
    def rate(self) -> float:
        return sum(self.worker_fps.values())


@dataclass(frozen=True)
class ElasticDecision:
    """``add`` a worker, ``release`` the named one, or ``hold``; with the reason and the rate it was based on."""

    action: Literal["add", "release", "hold"]
    reason: str
    rate_fps: float
    worker: str | None = None


class ElasticController:
    """Adds a worker when the rate stays under the target, releases one when the rest can hold it (hysteresis).

    Feed it one :class:`ElasticSample` per tick; it answers with an :class:`ElasticDecision`. The caller carries
    the decision out and keeps feeding samples. Conditions must hold for a while (``add_after_s``,
    ``release_after_s``) and nothing happens during ``cooldown_s`` after a change or while a worker is starting.
    """

    def __init__(self, config: ElasticConfig) -> None:
        self.config = config
        self._under_since: float | None = None
        self._over_since: float | None = None
        self._last_change: float | None = None

    def _cooling(self, now: float) -> bool:
        return self._last_change is not None and now - self._last_change < self.config.cooldown_s

    def step(self, sample: ElasticSample, max_workers: int | None = None) -> ElasticDecision:
        """Decide for this sample. ``max_workers`` caps the active workers (the pool's size when None)."""
        cfg, now, rate = self.config, sample.time, sample.rate
        active = len(sample.worker_fps)
        cap = min(x for x in (cfg.max_workers, max_workers, active + sample.standby) if x is not None)
        if sample.starting or self._cooling(now) or not sample.worker_fps:
            self._under_since = self._over_since = None
            return ElasticDecision("hold", "starting or cooling down", rate)
        if active < cfg.min_workers and sample.standby:
            return self._change(now, ElasticDecision("add", f"{active} workers, fewer than {cfg.min_workers}", rate))
        under = rate < cfg.target_fps
        slowest = min(sample.worker_fps, key=lambda name: (sample.worker_fps[name], name))
        without = rate - sample.worker_fps[slowest]
        over = active > cfg.min_workers and without >= cfg.release_margin * cfg.target_fps
        self._under_since = (self._under_since if self._under_since is not None else now) if under else None
        self._over_since = (self._over_since if self._over_since is not None else now) if over else None
        if under and active < cap and now - self._under_since >= cfg.add_after_s:
            return self._change(now, ElasticDecision(
                "add", f"rate {rate:.1f} FPS under the target {cfg.target_fps:.1f} FPS", rate))
        if over and now - self._over_since >= cfg.release_after_s:
            return self._change(now, ElasticDecision(
                "release", f"the others hold {without:.1f} FPS >= {cfg.release_margin:g} x {cfg.target_fps:.1f}",
                rate, slowest))
        return ElasticDecision("hold", "within the band", rate)

    def _change(self, now: float, decision: ElasticDecision) -> ElasticDecision:
        self._last_change = now
        self._under_since = self._over_since = None
        return decision


def median_or_none(values: Iterable[float]) -> float | None:
    items = list(values)
    return statistics.median(items) if items else None
