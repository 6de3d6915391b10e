"""Transports: how the scheduler starts workers, sends them jobs and hears back.

A transport makes :class:`WorkerHandle` objects. A handle starts its worker without blocking and reports through
:class:`WorkerEvents`, from its own thread: ready (with the worker's pid), a job's result (planes already copied
into the caller's memory), or death (the process or actor is gone; every job it held is lost). The scheduler
owns the policy; a transport only moves jobs and frames.

- :class:`ThreadTransport`: workers are threads of this process (simulated workers in tests, one in-process GPU).
- :class:`~renderer.scheduler.process.ProcessTransport`: one spawned process per worker, frames through shared
  memory.
- :class:`~renderer.scheduler.ray_transport.RayTransport`: one Ray actor per worker, frames through Ray's object
  store (a real cluster too).
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from abc import ABC, abstractmethod
from typing import Protocol

import numpy as np
import torch

from .engines import WorkerSpec
from .types import JobResult, JobSpec


class WorkerEvents(Protocol):
    """Callbacks a handle makes (from its own threads; each handle reports ``worker_died`` at most once)."""

    def worker_ready(self, handle: WorkerHandle, pid: int | None, device: str) -> None: ...

    def worker_result(self, handle: WorkerHandle, result: JobResult) -> None: ...

    def worker_died(self, handle: WorkerHandle, reason: str, during_start: bool) -> None: ...


class WorkerHandle(ABC):
    """One running worker (one incarnation: a restart makes a new handle)."""

    def __init__(self, name: str, spec: WorkerSpec, events: WorkerEvents, slots: int) -> None:
        self.name = name
        self.spec = spec
        self.events = events
        self.slots = slots
        self.pid: int | None = None
        self._died = threading.Event()
        self._died_lock = threading.Lock()

    @abstractmethod
    def start(self) -> None:
        """Start the worker; return at once (``worker_ready`` or ``worker_died`` follows)."""

    @abstractmethod
    def submit(self, job: JobSpec) -> None:
        """Queue a job (the scheduler never has more than ``slots`` jobs on one handle)."""

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs' current one, then stop, and free the worker's resources (blocks)."""

    @abstractmethod
    def kill(self) -> None:
        """Stop at once, as a crash would (tests and hung workers); ``worker_died`` follows."""

    def _report_death(self, reason: str, during_start: bool) -> None:
        with self._died_lock:
            if self._died.is_set():
                return
            self._died.set()
        self.events.worker_died(self, reason, during_start)

    @property
    def dead(self) -> bool:
        return self._died.is_set()


class Transport(ABC):
    """Makes handles; may hold resources shared by them (a Ray connection)."""

    name: str = "transport"

    @abstractmethod
    def create(self, name: str, spec: WorkerSpec, events: WorkerEvents, slots: int) -> WorkerHandle: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the transport holds (called by ``Scheduler.close``)."""


def to_numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    """A contiguous numpy copy of a plane (tensors are moved to the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").contiguous().numpy().copy()
    return np.array(value, copy=True, order="C")


def short_error(exc: BaseException) -> str:
    """``Type: message`` plus the innermost frame of the traceback."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


# ----- threads ----------------------------------------------------------------------------------------------------
class ThreadTransport(Transport):
    """Workers as threads of this process. ``kill`` stops a worker as a crash would (after its current job)."""

    name = "thread"

    def create(self, name: str, spec: WorkerSpec, events: WorkerEvents, slots: int) -> WorkerHandle:
        return _ThreadHandle(name, spec, events, slots)


_STOP = object()


class _ThreadHandle(WorkerHandle):
    def __init__(self, name: str, spec: WorkerSpec, events: WorkerEvents, slots: int) -> None:
        super().__init__(name, spec, events, slots)
        self._jobs: queue.Queue = queue.Queue()
        self._killed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gscache-worker-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: JobSpec) -> None:
        self._jobs.put(job)

    def stop(self, timeout: float = 10.0) -> None:
        self._jobs.put(_STOP)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def kill(self) -> None:
        self._killed.set()
        self._jobs.put(_STOP)

    def _run(self) -> None:
        try:
            engine = self.spec.build()
        except Exception as exc:  # a worker that cannot start reports it, it does not raise in a thread
            self._report_death(f"start failed: {short_error(exc)}", during_start=True)
            return
        self.events.worker_ready(self, None, engine.device)
        while True:
            job = self._jobs.get()
            if job is _STOP or self._killed.is_set():
                break
            start = time.perf_counter()
            try:
                planes = engine.render(job)
                error = None
            except Exception as exc:
                planes, error = None, short_error(exc)
            render_ms = (time.perf_counter() - start) * 1e3
            if self._killed.is_set():
                break
            t0 = time.perf_counter()
            copied = None if planes is None else {k: to_numpy(v) for k, v in planes.items()}
            transfer_ms = (time.perf_counter() - t0) * 1e3
            self.events.worker_result(self, JobResult(job.job_id, job.attempt, copied, error, render_ms, transfer_ms))
        if self._killed.is_set():
            self._report_death("killed", during_start=False)
