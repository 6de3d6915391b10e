"""Local worker processes: one spawned process per GPU, frames back through shared memory.

Each worker has ``slots`` shared-memory segments (one per job it may hold), owned by the parent: the parent picks
a free slot when it sends a job (growing the segment first when the frame does not fit), the worker renders and
copies the planes straight into that slot (one device-to-host copy for a GPU frame), and answers with a small
control message over its pipe. The parent's reader thread copies the planes out and frees the slot. Nothing
large is ever pickled. A worker that dies (a crash, SIGKILL, out of memory) closes its pipe: the reader thread
sees it at once and reports the death with the exit code; the segments stay the parent's and are unlinked when
the handle ends.

Processes are started with ``torch.multiprocessing``'s ``spawn`` context (CUDA cannot be used in a forked
child), as daemons: they end with the parent, and a worker whose parent died ends when its pipe closes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import torch
import torch.multiprocessing as tmp

from ..switches import turned_off
from .engines import RenderWorker, WorkerSpec
from .transport import Transport, WorkerEvents, WorkerHandle, short_error
from .types import JobResult, JobSpec


class ProcessTransport(Transport):
    """One ``spawn`` process per worker (see the module doc)."""

    name = "process"

    def create(self, name: str, spec: WorkerSpec, events: WorkerEvents, slots: int) -> WorkerHandle:
        return _ProcessHandle(name, spec, events, slots)


class _ProcessHandle(WorkerHandle):
    def __init__(self, name: str, spec: WorkerSpec, events: WorkerEvents, slots: int) -> None:
        super().__init__(name, spec, events, slots)
        self._ctx = tmp.get_context("spawn")
        self._conn: Connection | None = None
        self._proc = None
        self._send_lock = threading.Lock()
        self._slot_lock = threading.Lock()
        self._segments: list[SharedMemory | None] = [None] * slots
        self._free = list(range(slots))
        self._slot_of: dict[int, tuple[int, JobSpec]] = {}  # job id -> (slot, job)
        self._stopping = False
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        spec = self.spec.for_transport() if isinstance(self.spec, RenderWorker) else self.spec
        self._proc = self._ctx.Process(target=_worker_main, args=(child, spec), name=f"gscache-{self.name}",
                                       daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self.pid = self._proc.pid
        self._reader = threading.Thread(target=self._read, name=f"gscache-reader-{self.name}", daemon=True)
        self._reader.start()

    # ----- parent -> worker ---------------------------------------------------------------------------------------
    def submit(self, job: JobSpec) -> None:
        nbytes = job.nbytes()
        with self._slot_lock:
            if not self._free:
                raise RuntimeError(f"worker {self.name}: all {self.slots} slots are in use")
            slot = self._free.pop()
            segment = self._segments[slot]
            if segment is None or segment.size < nbytes:
                if segment is not None:
                    _release(segment)
                segment = SharedMemory(create=True, size=max(nbytes, 1))
                self._segments[slot] = segment
            self._slot_of[job.job_id] = (slot, job)
        try:
            with self._send_lock:
                self._conn.send(("job", job, slot, segment.name))
        except (OSError, ValueError):
            pass  # the worker is gone: the reader thread reports the death, and the job is re-queued with it

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        try:
            with self._send_lock:
                self._conn.send(("stop",))
        except (OSError, ValueError, AttributeError):
            pass
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5.0)
        if self._reader is not None and threading.current_thread() is not self._reader:
            self._reader.join(timeout)
        self._free_segments()

    def kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()

    # ----- worker -> parent ---------------------------------------------------------------------------------------
    def _read(self) -> None:
        ready = False
        try:
            while True:
                msg = self._conn.recv()
                if msg[0] == "ready":
                    ready = True
                    self.events.worker_ready(self, msg[1], msg[2])
                elif msg[0] == "start-failed":
                    self._report_death(f"start failed: {msg[1]}", during_start=True)
                    return
                else:
                    self.events.worker_result(self, self._collect(msg))
        except (EOFError, OSError):
            pass
        finally:
            self._conn.close()
            if not self._stopping:
                self._proc.join(5.0)
                self._report_death(_exit_reason(self._proc.exitcode), during_start=not ready)
            self._free_segments()

    def _collect(self, msg: tuple) -> JobResult:
        kind, job_id, attempt, render_ms, payload = msg
        with self._slot_lock:
            slot, job = self._slot_of.pop(job_id)
        try:
            if kind == "error":
                return JobResult(job_id, attempt, None, payload, render_ms)
            start = time.perf_counter()
            planes = _read_planes(self._segments[slot], job)
            return JobResult(job_id, attempt, planes, None, render_ms, payload + (time.perf_counter() - start) * 1e3)
        finally:
            with self._slot_lock:
                self._free.append(slot)

    def _free_segments(self) -> None:
        with self._slot_lock:
            for i, segment in enumerate(self._segments):
                if segment is not None:
                    _release(segment)
                    self._segments[i] = None


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "the worker's pipe closed (process still running)"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _release(segment: SharedMemory) -> None:
    try:
        segment.close()
    except BufferError:
        pass
    try:
        segment.unlink()
    except FileNotFoundError:
        pass


def _read_planes(segment: SharedMemory, job: JobSpec) -> dict[str, np.ndarray]:
    planes, offset = {}, 0
    for name, shape, dtype in job.plane_layout():
        view = np.ndarray(shape, dtype=dtype, buffer=segment.buf, offset=offset)
        planes[name] = view.copy()
        del view
        offset += int(np.prod(shape)) * dtype.itemsize
    return planes


# ----- the worker process -------------------------------------------------------------------------------------------
def _worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker process: build the engine, then render jobs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops its workers
    try:
        engine = spec.build()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        conn.send(("start-failed", short_error(exc)))
        conn.close()
        os._exit(1)
    conn.send(("ready", os.getpid(), engine.device))
    segments = _WorkerSegments(pin=str(engine.device).startswith("cuda") and not turned_off(PIN_ENV))
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                break
            if msg[0] == "stop":
                break
            _, job, slot, segment_name = msg
            _serve(conn, engine, job, segments.attach(slot, segment_name))
    finally:
        segments.close()
        conn.close()
    os._exit(0)  # skip the interpreter's slow teardown (torch, CUDA): everything worth keeping was sent


PIN_ENV = "GSCACHE_PIN_FRAMES"


class _WorkerSegments:
    """The worker's view of its slots' shared-memory segments, attached on first use.

    ``pin``: page-lock each segment for CUDA, so that the frame's device-to-host copy runs on the copy engine straight
    into it, instead of through the driver's staging buffer and a second host copy (a 2064 x 2208 stereo frame is 27
    MB). Where CUDA refuses, the segment stays pageable: slower, still correct. ``GSCACHE_PIN_FRAMES=0`` turns it off
    (A/B measurements).
    """

    def __init__(self, pin: bool) -> None:
        self._driver = _HostRegistration.load() if pin else None
        self._attached: dict[int, tuple[SharedMemory, int | None]] = {}  # slot -> (segment, registered address)

    def attach(self, slot: int, name: str) -> SharedMemory:
        entry = self._attached.get(slot)
        if entry is not None and entry[0].name.lstrip("/") == name.lstrip("/"):
            return entry[0]
        if entry is not None:
            self._detach(*entry)
        segment = SharedMemory(name=name)
        registered = self._driver.register(segment) if self._driver is not None else None
        self._attached[slot] = (segment, registered)
        return segment

    def close(self) -> None:
        for entry in self._attached.values():
            self._detach(*entry)
        self._attached.clear()

    def _detach(self, segment: SharedMemory, registered: int | None) -> None:
        if registered is not None and self._driver is not None:
            self._driver.unregister(registered)
        segment.close()


class _HostRegistration:
    """``cuMemHostRegister`` / ``cuMemHostUnregister`` of the CUDA driver, through ctypes.

    The driver API rather than ``cudaHostRegister``: a refused registration then leaves no error behind in the
    runtime, where the next kernel launch's ``cudaGetLastError`` check would report it as that kernel's failure.
    Needs the worker's CUDA context current on the calling thread (the engine has run on it)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._register = lib.cuMemHostRegister_v2
        self._register.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        self._register.restype = ctypes.c_int
        self._unregister = lib.cuMemHostUnregister
        self._unregister.argtypes = [ctypes.c_void_p]
        self._unregister.restype = ctypes.c_int

    @classmethod
    def load(cls) -> _HostRegistration | None:
        try:
            return cls(ctypes.CDLL("libcuda.so.1"))
        except (OSError, AttributeError):
            return None

    def register(self, segment: SharedMemory) -> int | None:
        """Page-lock ``segment``; returns the registered address, or None where the driver refuses."""
        view = np.frombuffer(segment.buf, dtype=np.uint8)
        address = int(view.ctypes.data)
        del view  # no export of the buffer may outlive this call, or the segment cannot be closed
        return address if self._register(address, segment.size, 0) == 0 else None

    def unregister(self, address: int) -> None:
        self._unregister(address)


def _serve(conn: Connection, engine, job: JobSpec, segment: SharedMemory) -> None:
    start = time.perf_counter()
    try:
        planes = engine.render(job)
    except Exception as exc:  # a failed frame is the request's error, the worker goes on
        conn.send(("error", job.job_id, job.attempt, (time.perf_counter() - start) * 1e3, short_error(exc)))
        return
    rendered = time.perf_counter()
    offset = 0
    for name, shape, dtype in job.plane_layout():
        dst = np.ndarray(shape, dtype=dtype, buffer=segment.buf, offset=offset)
        value = planes[name]
        if isinstance(value, torch.Tensor):
            torch.from_numpy(dst).copy_(value.detach())
        else:
            dst[...] = value
        del dst
        offset += int(np.prod(shape)) * dtype.itemsize
    copied = time.perf_counter()
    conn.send(("done", job.job_id, job.attempt, (rendered - start) * 1e3, (copied - rendered) * 1e3))
