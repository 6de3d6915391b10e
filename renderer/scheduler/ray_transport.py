"""Workers as Ray actors: the same scheduler past one host (``pip install 'gscache[cluster]'``).

One actor per worker holds the scene and its frame cache; a GPU worker asks Ray for one GPU (``num_gpus=1``) and
renders on the GPU Ray gives it. Frames come back as numpy arrays through Ray's object store (shared memory on the
actor's node, Ray's own transfer between nodes). A dead actor (its process killed, its node lost) fails its
pending calls with ``RayActorError``: the handle reports the death and the scheduler re-queues the jobs and
starts a new actor. Ray is imported only when this transport is made.

See ``renderer/scheduler/README.md`` for running on a real Ray cluster.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from .engines import RenderWorker, WorkerSpec
from .transport import Transport, WorkerEvents, WorkerHandle, short_error, to_numpy
from .types import JobResult, JobSpec


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray transport needs Ray: pip install 'gscache[cluster]' (or pip install ray)") from exc
    return ray


class _ActorBody:
    """The actor's class body (wrapped with ``ray.remote`` by :class:`RayTransport`)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.engine = spec.build()

    def ready(self) -> tuple[int, str]:
        return os.getpid(), self.engine.device

    def render(self, job: JobSpec) -> tuple:
        start = time.perf_counter()
        try:
            planes = self.engine.render(job)
        except Exception as exc:  # the request's error; the actor goes on
            return ("error", (time.perf_counter() - start) * 1e3, short_error(exc))
        rendered = time.perf_counter()
        arrays = {name: to_numpy(value) for name, value in planes.items()}
        return ("done", (rendered - start) * 1e3, (time.perf_counter() - rendered) * 1e3, arrays)


class RayTransport(Transport):
    """Workers as Ray actors.

    Args:
        address: the cluster to join when Ray is not initialised yet (``"auto"``: the one ``ray start`` made on
            this node; ``"ray://head:10001"``: Ray Client); None starts a local Ray instance.
        init_kwargs: more arguments for ``ray.init`` (``num_cpus``, ``runtime_env``, ``namespace``, ...).
        actor_options: ``.options(...)`` for every actor, over the defaults (``num_gpus=1`` for a CUDA
            :class:`RenderWorker`, ``num_cpus=1`` for a CPU one, ``num_cpus=0`` for a simulated worker).

    ``close()`` shuts Ray down only when this transport started it.
    """

    name = "ray"

    def __init__(self, address: str | None = None, init_kwargs: Mapping[str, Any] | None = None,
                 actor_options: Mapping[str, Any] | None = None) -> None:
        self.ray = _import_ray()
        self._owns_ray = False
        if not self.ray.is_initialized():
            self.ray.init(address=address, **dict(init_kwargs or {}))
            self._owns_ray = True
        self.actor_options = dict(actor_options or {})
        self._actor_class = self.ray.remote(_ActorBody)

    def options_for(self, spec: WorkerSpec) -> tuple[dict[str, Any], WorkerSpec]:
        """Actor options and the spec as the actor gets it (a CUDA worker renders on the GPU Ray assigns)."""
        options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 1}
        if isinstance(spec, RenderWorker):
            if spec.device.startswith("cuda"):
                options.update(num_gpus=1)
                spec = dataclasses.replace(spec, device="cuda:0")
            else:
                options.update(num_cpus=1)
            spec = spec.for_transport()
        options.update(self.actor_options)
        return options, spec

    def create(self, name: str, spec: WorkerSpec, events: WorkerEvents, slots: int) -> WorkerHandle:
        return _RayHandle(name, spec, events, slots, self)

    def close(self) -> None:
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()


_STOP = object()


class _RayHandle(WorkerHandle):
    def __init__(self, name: str, spec: WorkerSpec, events: WorkerEvents, slots: int, transport: RayTransport):
        super().__init__(name, spec, events, slots)
        self._transport = transport
        self._ray = transport.ray
        self._actor = None
        self._calls: queue.Queue = queue.Queue()
        self._stopping = False
        self._reader = threading.Thread(target=self._read, name=f"gscache-ray-{name}", daemon=True)

    def start(self) -> None:
        options, spec = self._transport.options_for(self.spec)
        self._actor = self._transport._actor_class.options(**options).remote(spec)
        self._reader.start()

    def submit(self, job: JobSpec) -> None:
        self._calls.put((job, self._actor.render.remote(job)))

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._calls.put(_STOP)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout)
        self._kill_actor()

    def kill(self) -> None:
        self._kill_actor()

    def _kill_actor(self) -> None:
        if self._actor is not None:
            try:
                self._ray.kill(self._actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _read(self) -> None:
        errors = (self._ray.exceptions.RayActorError, self._ray.exceptions.RayTaskError)
        try:
            pid, device = self._ray.get(self._actor.ready.remote())
        except errors as exc:
            self._report_death(f"start failed: {_first_line(exc)}", during_start=True)
            return
        self.pid = pid
        self.events.worker_ready(self, pid, device)
        while True:
            item = self._calls.get()
            if item is _STOP:
                return
            job, ref = item
            try:
                reply = self._ray.get(ref)
            except errors as exc:
                if not self._stopping:
                    self._report_death(_first_line(exc), during_start=False)
                return
            self.events.worker_result(self, _result(job, reply))


def _result(job: JobSpec, reply: tuple) -> JobResult:
    if reply[0] == "error":
        return JobResult(job.job_id, job.attempt, None, reply[2], reply[1])
    start = time.perf_counter()
    planes = {name: value.copy() for name, value in reply[3].items()}  # out of the object store
    return JobResult(job.job_id, job.attempt, planes, None, reply[1], reply[2] + (time.perf_counter() - start) * 1e3)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
