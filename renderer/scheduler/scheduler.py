"""The multi-GPU scheduler: requests in, frames out, over any transport (threads, local processes, Ray actors).

One control thread runs the elastic controller, restarts and start timeouts; jobs are dispatched wherever state
changes (a submit, a result, a worker ready), under one lock. Futures are resolved outside the lock.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from ..cameras import Camera, StereoRig
from ..types import RenderMode
from .engines import WorkerSpec
from .policy import (
    CostKey,
    CostModel,
    ElasticController,
    ElasticSample,
    ModeDecision,
    WorkerLoad,
    choose_mode,
    pick_earliest_finish,
)
from .transport import ThreadTransport, Transport, WorkerHandle, short_error
from .types import (
    MODE_SETTINGS,
    ElasticConfig,
    Frame,
    FrameRenderError,
    FrameTimings,
    JobResult,
    JobSpec,
    Mode,
    ModeSetting,
    NoWorkersError,
    SchedulerClosedError,
    SchedulerConfig,
    SchedulerEvent,
    ViewSpec,
    WorkerInfo,
    WorkerLostError,
    WorkerStartError,
    WorkerState,
    check_render_mode,
)

ACTIVE: tuple[str, ...] = ("starting", "ready", "restarting")


@dataclass(frozen=True)
class SchedulerStats:
    """Counts since the scheduler started.

    Attributes:
        submitted, completed, failed: requests; requeued: jobs sent again after their worker died;
        dropped_results: results ignored because their job was no longer expected (never delivered twice);
        frames_by_mode: completed requests per mode.
    """

    submitted: int
    completed: int
    failed: int
    requeued: int
    dropped_results: int
    frames_by_mode: dict[str, int]


@dataclass
class _Request:
    id: int
    future: Future
    mode: Mode
    submitted: float
    parts: int
    results: dict[int, tuple[str, JobResult]] = field(default_factory=dict)
    first_dispatch: float | None = None
    attempts: int = 1
    done: bool = False


@dataclass
class _Job:
    spec: JobSpec
    key: CostKey
    request: _Request
    est_ms: float = 0.0


@dataclass
class _Worker:
    name: str
    spec: WorkerSpec
    state: WorkerState = "standby"
    handle: WorkerHandle | None = None
    pid: int | None = None
    device: str = ""
    in_flight: dict[int, _Job] = field(default_factory=dict)
    free_at: float = 0.0
    frames: int = 0
    restarts: int = 0
    last_error: str | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    after_drain: str = "standby"  # "standby" (elastic release) or "remove" (operator)

    def holds(self, scene: str) -> bool:
        names = self.spec.scene_names()
        return names is None or scene in names


def _make_transport(transport: Transport | str) -> Transport:
    if isinstance(transport, Transport):
        return transport
    if transport == "thread":
        return ThreadTransport()
    if transport == "process":
        from .process import ProcessTransport

        return ProcessTransport()
    if transport == "ray":
        from .ray_transport import RayTransport

        return RayTransport()
    raise ValueError(f"transport: expected 'process', 'thread', 'ray' or a Transport, got {transport!r}")


def _resolve(future: Future, value: Frame | BaseException) -> None:
    try:
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
    except InvalidStateError:  # cancelled by the caller
        pass


class Scheduler:
    """Serves render requests with a pool of workers (one per GPU), placing each job where it finishes first.

    Args:
        workers: the pool: :class:`RenderWorker` / :class:`SimulatedWorker` specs (or any ``WorkerSpec``).
        mode: ``auto``, ``frame-parallel`` or ``eye-split`` (overrides ``config.mode`` when given).
        target_fps: hold this rate with as few workers as possible (overrides ``config.elastic``'s target; makes
            an :class:`ElasticConfig` when the config has none). None: every worker of the pool runs.
        transport: ``process`` (one spawned process per worker), ``thread``, ``ray`` or a :class:`Transport`.
        config: the rest (see :class:`SchedulerConfig`).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, workers: Sequence[WorkerSpec], mode: ModeSetting | None = None, target_fps: float | None = None,
                 transport: Transport | str = "process", config: SchedulerConfig | None = None) -> None:
        workers = list(workers)
        if not workers:
            raise ValueError("workers: expected at least one worker spec, got none")
        config = config or SchedulerConfig()
        if mode is not None:
            config = dataclasses.replace(config, mode=mode)
        if target_fps is not None:
            elastic = config.elastic or ElasticConfig(target_fps)
            config = dataclasses.replace(config, elastic=dataclasses.replace(elastic, target_fps=target_fps))
        self.config = config
        self.costs = CostModel(config.cost)
        self.transport = _make_transport(transport)
        self._elastic = ElasticController(config.elastic) if config.elastic else None
        self._cond = threading.Condition()
        self._workers: dict[str, _Worker] = {}
        self._pending: deque[_Job] = deque()
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count()
        self._job_ids = itertools.count()
        self._names = itertools.count()
        self._events: list[SchedulerEvent] = []
        self._seen: dict[CostKey, int] = {}
        self._workload: tuple[CostKey, Mode] | None = None
        self._counts = {"submitted": 0, "completed": 0, "failed": 0, "requeued": 0, "dropped": 0}
        self._by_mode: dict[str, int] = {}
        self._stoppers: list[threading.Thread] = []
        self._closed = False
        self.last_decision: ModeDecision | None = None
        for spec in workers:
            self._register(spec)
        initial = list(self._workers.values())
        if config.elastic is not None:
            initial = initial[:config.elastic.min_workers]
        to_start = [self._mark_starting(w, time.monotonic()) for w in initial]
        self._control = threading.Thread(target=self._control_loop, name="gscache-scheduler", daemon=True)
        self._control.start()
        self._start(to_start)

    # ----- public API ---------------------------------------------------------------------------------------------
    def submit(self, view: Camera | StereoRig | Sequence[Camera], scene: str = "default",
               render_mode: RenderMode = "rgb", background: Sequence[float] | None = None,
               sh_degree: int | None = None, mode: ModeSetting | None = None) -> Future[Frame]:
        """Queue one frame of ``view`` of ``scene``; the future gives a :class:`Frame` or a ``SchedulerError``.

        ``render_mode``, ``background`` and ``sh_degree`` are as :func:`renderer.render`'s; ``mode`` overrides the
        scheduler's mode for this request. Raises ``ValueError`` for a bad view, scene or option.
        """
        check_render_mode(render_mode)
        if mode is not None and mode not in MODE_SETTINGS:
            raise ValueError(f"mode: expected one of {', '.join(MODE_SETTINGS)}, got {mode!r}")
        spec = ViewSpec.of(view)
        bg = None if background is None else tuple(float(v) for v in background)
        if bg is not None and len(bg) != 3:
            raise ValueError(f"background: expected 3 values (RGB), got {len(bg)}")
        future: Future[Frame] = Future()
        resolutions: list[tuple[Future, Frame | BaseException]] = []
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("submit: the scheduler is closed")
            if not any(w.holds(scene) for w in self._workers.values()):
                raise ValueError(f"scene: no worker holds scene {scene!r} ({self._scene_listing()})")
            now = time.monotonic()
            request = _Request(next(self._ids), future, "frame-parallel", now, 1)
            request.mode = self._choose_mode(spec, scene, now, mode or self.config.mode)
            views = [spec] if request.mode == "frame-parallel" else [spec.part(i) for i in range(spec.num_cameras)]
            request.parts = len(views)
            for part, part_view in enumerate(views):
                job = JobSpec(next(self._job_ids), request.id, part, 1, scene, part_view, render_mode, bg, sh_degree,
                              self.config.frame_format)
                key = CostKey(scene, part_view.width, part_view.height, part_view.num_cameras)
                self._pending.append(_Job(job, key, request))
            self._requests[request.id] = request
            self._counts["submitted"] += 1
            self._dispatch(now, resolutions)
            self._fail_if_no_workers(resolutions)
        self._finish(resolutions)
        return future

    def render(self, view: Camera | StereoRig | Sequence[Camera], scene: str = "default",
               timeout: float | None = None, **kwargs) -> Frame:
        """``submit(...).result(timeout)``."""
        return self.submit(view, scene, **kwargs).result(timeout)

    def add_worker(self, spec: WorkerSpec) -> str:
        """Add a worker to the pool while running; returns its name. It starts at once unless the pool is elastic
        (then the controller starts it when the rate needs it)."""
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("add_worker: the scheduler is closed")
            worker = self._register(spec)
            self._event("operator-add", worker.name, "added by the operator")
            handle = None if self._elastic else self._mark_starting(worker, time.monotonic())
        if handle is not None:
            self._start([handle])
        return worker.name

    def remove_worker(self, name: str, wait: bool = True, timeout: float | None = 60.0) -> None:
        """Take a worker out of the pool: it gets no new jobs, finishes the ones it holds, then stops."""
        with self._cond:
            worker = self._workers.get(name)
            if worker is None:
                raise ValueError(f"worker: no worker named {name!r} (workers: {', '.join(self._workers)})")
            self._event("operator-remove", name, "removed by the operator")
            self._drain(worker, "remove")
            if wait and not self._cond.wait_for(lambda: name not in self._workers, timeout):
                raise TimeoutError(f"remove_worker: {name} still holds {len(worker.in_flight)} jobs after {timeout} s")

    def wait_ready(self, timeout: float | None = None, count: int | None = None) -> list[str]:
        """Block until ``count`` workers (default: every starting one) are ready; returns the ready ones' names.

        Raises :class:`WorkerStartError` when no worker (or fewer than ``count``) could start, ``TimeoutError`` on
        timeout.
        """
        def settled() -> bool:
            ready = sum(w.state == "ready" for w in self._workers.values())
            starting = sum(w.state in ("starting", "restarting") for w in self._workers.values())
            return starting == 0 if count is None else (ready >= count or ready + starting < count)
        with self._cond:
            if not self._cond.wait_for(settled, timeout):
                raise TimeoutError(f"wait_ready: workers not ready after {timeout} s ({self._state_listing()})")
            ready = [w.name for w in self._workers.values() if w.state == "ready"]
            if not ready or len(ready) < (count or 1):
                errors = "; ".join(f"{w.name}: {w.last_error}" for w in self._workers.values() if w.last_error)
                what = "no worker" if not ready else f"{len(ready)} of {count} workers"
                raise WorkerStartError(f"{what} started: {errors or self._state_listing()}")
            return ready

    def workers(self) -> list[WorkerInfo]:
        """The pool, as :class:`WorkerInfo` rows."""
        with self._cond:
            return [WorkerInfo(w.name, w.device or w.spec.device, w.state, w.pid, len(w.in_flight), w.frames,
                               w.restarts, w.last_error) for w in self._workers.values()]

    def events(self) -> list[SchedulerEvent]:
        """What happened to the workers, oldest first."""
        with self._cond:
            return list(self._events)

    def stats(self) -> SchedulerStats:
        with self._cond:
            c = self._counts
            return SchedulerStats(c["submitted"], c["completed"], c["failed"], c["requeued"], c["dropped"],
                                  dict(self._by_mode))

    def rate_fps(self) -> float | None:
        """The active workers' estimated rate on the current workload (what the elastic controller sees)."""
        with self._cond:
            sample = self._sample(time.monotonic())
            return None if sample is None else sample.rate

    def close(self, drain: bool = True, timeout: float = 60.0) -> None:
        """Stop: with ``drain``, serve what was submitted first (up to ``timeout``); fail the rest with
        :class:`SchedulerClosedError`; stop every worker and free the transport."""
        resolutions: list[tuple[Future, Frame | BaseException]] = []
        with self._cond:
            if self._closed:
                return
            if drain:
                self._cond.wait_for(lambda: not self._requests or not self._active_workers(), timeout)
            self._closed = True
            for request in list(self._requests.values()):
                self._fail(request, SchedulerClosedError(f"request {request.id}: the scheduler was closed"),
                           resolutions)
            self._pending.clear()
            handles = [w.handle for w in self._workers.values() if w.handle is not None and w.state in
                       ("starting", "ready", "draining")]
            for w in self._workers.values():
                w.state = "stopped"
            self._cond.notify_all()
        self._finish(resolutions)
        self._control.join(timeout)
        stoppers = [threading.Thread(target=h.stop, daemon=True) for h in handles]
        for t in stoppers:
            t.start()
        for t in stoppers + self._stoppers:
            t.join(timeout)
        self.transport.close()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- transport callbacks (WorkerEvents) ---------------------------------------------------------------------
    def worker_ready(self, handle: WorkerHandle, pid: int | None, device: str) -> None:
        resolutions: list = []
        with self._cond:
            worker = self._worker_of(handle)
            if worker is None:
                return
            worker.pid, worker.device = pid, device
            if worker.state == "starting":
                worker.state = "ready"
                self._event("ready", worker.name, f"on {device}" + (f", pid {pid}" if pid else ""))
            self._dispatch(time.monotonic(), resolutions)
            self._cond.notify_all()
        self._finish(resolutions)

    def worker_result(self, handle: WorkerHandle, result: JobResult) -> None:
        resolutions: list = []
        stop = None
        with self._cond:
            worker = self._worker_of(handle)
            job = None if worker is None else worker.in_flight.pop(result.job_id, None)
            if job is None or job.spec.attempt != result.attempt:
                self._counts["dropped"] += 1
                return
            now = time.monotonic()
            worker.frames += 1
            worker.free_at = now + sum(j.est_ms for j in worker.in_flight.values()) / 1e3
            if result.error is None:
                self.costs.observe(worker.name, job.key, result.render_ms)
            self._complete_part(job, worker.name, result, now, resolutions)
            if worker.state == "draining" and not worker.in_flight:
                stop = self._retire(worker)
            self._dispatch(now, resolutions)
            self._cond.notify_all()
        if stop is not None:
            self._stop_async(stop)
        self._finish(resolutions)

    def worker_died(self, handle: WorkerHandle, reason: str, during_start: bool) -> None:
        resolutions: list = []
        with self._cond:
            worker = self._worker_of(handle)
            if worker is None:
                return
            now = time.monotonic()
            worker.last_error = reason
            worker.handle, worker.pid = None, None
            self._event("died", worker.name, reason)
            self._requeue(worker, resolutions)
            if self._closed or worker.state == "draining":
                self._settle_drained(worker)
            elif during_start:
                worker.state = "failed"
                self._event("failed", worker.name, f"could not start: {reason}")
            elif worker.restarts >= self.config.max_restarts:
                worker.state = "failed"
                self._event("failed", worker.name, f"died {worker.restarts + 1} times")
            else:
                worker.state = "restarting"
                worker.restart_at = now + self.config.restart_delay_s * (2 ** worker.restarts)
            self._dispatch(now, resolutions)
            self._fail_if_no_workers(resolutions)
            self._cond.notify_all()
        self._finish(resolutions)

    # ----- workers ------------------------------------------------------------------------------------------------
    def _register(self, spec: WorkerSpec) -> _Worker:
        name = spec.name or f"w{next(self._names)}"
        while name in self._workers:
            if spec.name:
                raise ValueError(f"worker: a worker named {name!r} is already in the pool")
            name = f"w{next(self._names)}"
        worker = _Worker(name, spec)
        self._workers[name] = worker
        return worker

    def _mark_starting(self, worker: _Worker, now: float) -> WorkerHandle:
        """Make the worker's handle (the caller starts it outside the lock)."""
        worker.state, worker.started_at, worker.restart_at = "starting", now, None
        worker.handle = self.transport.create(worker.name, worker.spec, self, self.config.max_inflight)
        worker.in_flight.clear()
        return worker.handle

    def _start(self, handles: list[WorkerHandle]) -> None:
        """Start handles (outside the lock); one that cannot even be launched counts as failed to start."""
        for handle in handles:
            try:
                handle.start()
            except Exception as exc:  # e.g. a scene loader that does not pickle for spawn
                handle._report_death(f"start failed: {short_error(exc)}", during_start=True)

    def _worker_of(self, handle: WorkerHandle) -> _Worker | None:
        worker = self._workers.get(handle.name)
        return worker if worker is not None and worker.handle is handle else None

    def _active_workers(self) -> list[_Worker]:
        return [w for w in self._workers.values() if w.state in ACTIVE]

    def _drain(self, worker: _Worker, after: str) -> None:
        worker.after_drain = after
        if worker.state in ("ready", "starting") and worker.in_flight:
            worker.state = "draining"
            return
        handle = self._retire(worker) if worker.handle is not None else None
        if handle is None:
            self._settle_drained(worker)
        else:
            self._stop_async(handle)

    def _retire(self, worker: _Worker) -> WorkerHandle:
        handle = worker.handle
        worker.handle, worker.pid = None, None
        self._settle_drained(worker)
        return handle

    def _settle_drained(self, worker: _Worker) -> None:
        if worker.after_drain == "remove" or self._closed:
            self._workers.pop(worker.name, None)
            worker.state = "stopped"
        else:
            worker.state = "standby"
        worker.after_drain = "standby"
        self._cond.notify_all()

    def _stop_async(self, handle: WorkerHandle) -> None:
        thread = threading.Thread(target=handle.stop, name=f"gscache-stop-{handle.name}", daemon=True)
        thread.start()
        self._stoppers = [t for t in self._stoppers if t.is_alive()] + [thread]

    def _requeue(self, worker: _Worker, resolutions: list) -> None:
        lost = list(worker.in_flight.values())
        worker.in_flight.clear()
        worker.free_at = 0.0
        for job in reversed(lost):
            if job.request.done:
                continue
            attempt = job.spec.attempt + 1
            if attempt > self.config.max_attempts:
                self._fail(job.request, WorkerLostError(
                    f"request {job.request.id}: its job was lost {job.spec.attempt} times with the worker it ran on "
                    f"(last: {worker.name}, {worker.last_error})"), resolutions)
                continue
            job.spec = dataclasses.replace(job.spec, attempt=attempt)
            job.request.attempts = max(job.request.attempts, attempt)
            self._pending.appendleft(job)
            self._counts["requeued"] += 1

    # ----- dispatch -----------------------------------------------------------------------------------------------
    def _dispatch(self, now: float, resolutions: list) -> None:
        """Place pending jobs, in order, each on the worker predicted to finish it first given the jobs placed
        before it. A job placed on a worker with a free slot is sent; one placed on a full worker waits for it
        (it is placed again next time), and the jobs behind it see that worker's queue as longer: that is what
        gives each worker a share proportional to its speed."""
        cap = self.config.max_inflight
        ready = [w for w in self._workers.values() if w.state == "ready"]
        if not self._pending or not ready:
            return
        free_at = {w.name: max(now, w.free_at) for w in ready}
        slots = {w.name: cap - len(w.in_flight) for w in ready}
        placed: dict[int, set[str]] = {}  # request id -> workers given its parts in this pass
        sent: set[int] = set()
        for job in itertools.islice(self._pending, self._lookahead(len(ready))):
            if not any(n > 0 for n in slots.values()):
                break
            if job.request.done:  # failed or closed meanwhile: drop it
                sent.add(job.spec.job_id)
                continue
            candidates = [w for w in ready if w.holds(job.spec.scene)]
            siblings = self._siblings(job, candidates) | placed.get(job.request.id, set())
            if len(candidates) > len(siblings):
                candidates = [w for w in candidates if w.name not in siblings]
            loads = [WorkerLoad(w.name, free_at[w.name], self.costs.predict(w.name, job.key), cap - slots[w.name],
                                slots[w.name] > 0) for w in candidates]
            choice = pick_earliest_finish(loads, now)
            if choice is None:
                continue
            free_at[choice.worker] = choice.finish_at
            placed.setdefault(job.request.id, set()).add(choice.worker)
            if choice.now:
                slots[choice.worker] -= 1
                self._send(self._workers[choice.worker], job, now,
                           next(x.job_ms for x in loads if x.name == choice.worker))
                sent.add(job.spec.job_id)
        if sent:
            self._pending = deque(j for j in self._pending if j.spec.job_id not in sent)

    def _lookahead(self, workers: int) -> int:
        return max(16, 4 * workers * self.config.max_inflight)

    @staticmethod
    def _siblings(job: _Job, candidates: list[_Worker]) -> set[str]:
        """Workers holding or having rendered other parts of the job's request (eye-split puts eyes apart)."""
        done = {name for name, _ in job.request.results.values()}
        return done | {w.name for w in candidates for j in w.in_flight.values() if j.request is job.request}

    def _send(self, worker: _Worker, job: _Job, now: float, est_ms: float) -> None:
        job.est_ms = est_ms
        worker.free_at = max(now, worker.free_at) + est_ms / 1e3
        worker.in_flight[job.spec.job_id] = job
        if job.request.first_dispatch is None:
            job.request.first_dispatch = now
        worker.handle.submit(job.spec)

    def _choose_mode(self, spec: ViewSpec, scene: str, now: float, setting: ModeSetting) -> Mode:
        cams = spec.num_cameras
        full = CostKey(scene, spec.width, spec.height, cams)
        part = CostKey(scene, spec.width, spec.height, 1)
        ready = [w.name for w in self._workers.values() if w.state == "ready" and w.holds(scene)]
        n = self._seen[full] = self._seen.get(full, 0) + 1
        if cams < 2 or len(ready) < 2 or setting == "frame-parallel":
            mode: Mode = "frame-parallel"
        elif setting == "eye-split":
            mode = "eye-split"
        elif not self.costs.known(full):
            mode = "frame-parallel"
        elif not self.costs.known(part):
            mode = "eye-split"
        else:
            self.last_decision = choose_mode([self.costs.predict(w, full) for w in ready],
                                             [self.costs.predict(w, part) for w in ready], self._demand_fps(),
                                             len(self._requests) + 1, self.config.eye_split_gain)
            mode = self.last_decision.mode
            if self.config.probe_every and n % self.config.probe_every == 0:
                mode = "eye-split" if mode == "frame-parallel" else "frame-parallel"
        self._workload = (full if mode == "frame-parallel" else part, mode)
        return mode

    def _demand_fps(self) -> float | None:
        return None if self.config.elastic is None else self.config.elastic.target_fps

    # ----- results ------------------------------------------------------------------------------------------------
    def _complete_part(self, job: _Job, worker: str, result: JobResult, now: float, resolutions: list) -> None:
        request = job.request
        if request.done:
            self._counts["dropped"] += 1
            return
        if result.error is not None:
            self._fail(request, FrameRenderError(f"request {request.id}: worker {worker} failed to render it: "
                                                 f"{result.error}"), resolutions)
            return
        request.results[job.spec.part] = (worker, result)
        if len(request.results) < request.parts:
            return
        parts = [request.results[i] for i in range(request.parts)]
        planes = {}
        for name in parts[0][1].planes:
            arrays = [r.planes[name] for _, r in parts]
            planes[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        workers = tuple(itertools.chain.from_iterable(
            [name] * next(iter(r.planes.values())).shape[0] for name, r in parts))
        timings = FrameTimings(queued_ms=((request.first_dispatch or now) - request.submitted) * 1e3,
                               render_ms=max(r.render_ms for _, r in parts),
                               transfer_ms=max(r.transfer_ms for _, r in parts),
                               total_ms=(now - request.submitted) * 1e3)
        frame = Frame(request.id, planes.get("image"), planes.get("alpha"), planes.get("depth"), workers,
                      request.mode, request.attempts, timings)
        request.done = True
        self._requests.pop(request.id, None)
        self._counts["completed"] += 1
        self._by_mode[request.mode] = self._by_mode.get(request.mode, 0) + 1
        resolutions.append((request.future, frame))

    def _fail(self, request: _Request, error: BaseException, resolutions: list) -> None:
        if request.done:
            return
        request.done = True
        self._requests.pop(request.id, None)
        self._counts["failed"] += 1
        resolutions.append((request.future, error))
        self._cond.notify_all()

    def _fail_if_no_workers(self, resolutions: list) -> None:
        """Fail the pending requests that no running, starting, restartable (or, elastic: standby) worker holds."""
        usable = ("starting", "ready", "restarting", "draining") + (("standby",) if self._elastic else ())
        scenes_ok: dict[str, bool] = {}
        for job in list(self._pending):
            scene = job.spec.scene
            if scene not in scenes_ok:
                scenes_ok[scene] = any(w.state in usable and w.holds(scene) for w in self._workers.values())
            if not scenes_ok[scene]:
                reasons = "; ".join(f"{w.name}: {w.last_error}" for w in self._workers.values() if w.last_error)
                self._fail(job.request, NoWorkersError(
                    f"request {job.request.id}: no worker holding scene {scene!r} is running or can be restarted"
                    + (f" ({reasons})" if reasons else "")), resolutions)
        if not all(scenes_ok.values()):
            self._pending = deque(j for j in self._pending if not j.request.done)

    @staticmethod
    def _finish(resolutions: list) -> None:
        for future, value in resolutions:
            _resolve(future, value)

    # ----- control loop -------------------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        while True:
            resolutions: list = []
            to_start: list[WorkerHandle] = []
            to_kill: list[WorkerHandle] = []
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                for worker in self._workers.values():
                    if worker.state == "restarting" and worker.restart_at is not None and now >= worker.restart_at:
                        worker.restarts += 1
                        self._event("restart", worker.name, f"restart {worker.restarts} after: {worker.last_error}")
                        to_start.append(self._mark_starting(worker, now))
                    elif worker.state == "starting" and now - worker.started_at > self.config.start_timeout_s:
                        worker.last_error = f"not ready after {self.config.start_timeout_s} s"
                        to_kill.append(worker.handle)
                if self._elastic is not None:
                    to_start += self._elastic_tick(now)
                self._dispatch(now, resolutions)
                self._cond.wait(self.config.tick_s)
            self._start(to_start)
            for handle in to_kill:
                handle.kill()
            self._finish(resolutions)

    def _elastic_tick(self, now: float) -> list[WorkerHandle]:
        standby = [w for w in self._workers.values() if w.state == "standby"]
        active = self._active_workers()
        if len(active) < self.config.elastic.min_workers and standby:
            worker = self._pick_standby(standby)
            self._event("add", worker.name, f"fewer than min_workers={self.config.elastic.min_workers}")
            return [self._mark_starting(worker, now)]
        sample = self._sample(now)
        if sample is None:
            return []
        decision = self._elastic.step(sample)
        if decision.action == "add" and standby:
            worker = self._pick_standby(standby)
            self._event("add", worker.name, decision.reason, decision.rate_fps)
            return [self._mark_starting(worker, now)]
        if decision.action == "release" and decision.worker in self._workers:
            self._event("release", decision.worker, decision.reason, decision.rate_fps)
            self._drain(self._workers[decision.worker], "standby")
        return []

    def _sample(self, now: float) -> ElasticSample | None:
        if self._workload is None:
            return None
        key, mode = self._workload
        per_frame = 2.0 if mode == "eye-split" else 1.0
        ready = [w for w in self._workers.values() if w.state == "ready" and w.holds(key.scene)]
        fps = {w.name: 1e3 / (per_frame * max(self.costs.predict(w.name, key), 1e-6)) for w in ready}
        starting = sum(w.state in ("starting", "restarting") for w in self._workers.values())
        standby = sum(w.state == "standby" for w in self._workers.values())
        return ElasticSample(now, fps, starting, standby)

    def _pick_standby(self, standby: list[_Worker]) -> _Worker:
        """The standby worker expected to be fastest (lowest measured ms per pixel; pool order otherwise)."""
        key = self._workload[0] if self._workload else None

        def speed(w: _Worker) -> float:
            measured = self.costs.measured(w.name, key) if key is not None else None
            return float("inf") if measured is None else measured
        return min(standby, key=speed)

    # ----- bookkeeping --------------------------------------------------------------------------------------------
    def _event(self, action: str, worker: str, reason: str, rate: float | None = None) -> None:
        self._events.append(SchedulerEvent(time.monotonic(), action, worker, reason, rate))

    def _scene_listing(self) -> str:
        names: set[str] = set()
        for w in self._workers.values():
            held = w.spec.scene_names()
            if held is not None:
                names |= held
        return "workers hold " + (", ".join(sorted(names)) if names else "no named scene")

    def _state_listing(self) -> str:
        return ", ".join(f"{w.name} {w.state}" for w in self._workers.values())
