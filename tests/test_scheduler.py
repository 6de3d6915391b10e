"""The multi-GPU scheduler on CPU: simulated workers (threads and real processes) and real spawn render workers."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import numpy as np
import pytest
import torch

from renderer import CacheConfig, Camera, Splats, StereoRig, intrinsics_from_fov, look_at, render
from renderer.scheduler import (
    CostKey,
    ElasticConfig,
    FrameRenderError,
    NoWorkersError,
    RenderWorker,
    SchedulerClosedError,
    SchedulerConfig,
    SimulatedWorker,
    WorkerStartError,
)
from renderer.scheduler import Scheduler as _Scheduler


def make_rig(width: int = 64, height: int = 48, angle: float = 0.0) -> StereoRig:
    eye = (3 * np.sin(angle), 0.0, -3 * np.cos(angle))
    head = Camera(look_at(eye, (0, 0, 0), (0, -1, 0)), intrinsics_from_fov(width, height, 60.0), width, height)
    return StereoRig(head, 0.064)


def eye_ms(ms: float, width: int = 64, height: int = 48) -> float:
    """``ms_per_mpix`` that makes one eye of ``width x height`` cost ``ms`` at speed 1."""
    return ms / (width * height / 1e6)


def Scheduler(*args, **kwargs) -> _Scheduler:  # noqa: N802 - the tests' scheduler defaults to threads
    kwargs.setdefault("transport", "thread")
    return _Scheduler(*args, **kwargs)


def assert_no_children(pids, wait_s: float = 10.0) -> None:
    """Every pid has exited (a zombie not reaped yet counts as exited)."""
    deadline = time.monotonic() + wait_s
    for pid in pids:
        while pid is not None and _running(pid):
            assert time.monotonic() < deadline, f"worker process {pid} is still running"
            time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ----- policy at work, simulated workers in threads ---------------------------------------------------------------
def test_unequal_workers_get_a_proportional_share_within_10_percent_of_ideal():
    speeds = (1.0, 2.0, 4.0)
    workers = [SimulatedWorker(speed=s, ms_per_mpix=eye_ms(20.0), name=f"x{s:g}") for s in speeds]
    rig = make_rig()
    with Scheduler(workers, mode="frame-parallel") as sched:
        sched.wait_ready(10)
        for f in [sched.submit(rig) for _ in range(14)]:  # warm the cost model
            f.result(10)
        start = time.perf_counter()
        frames = [f.result(30) for f in [sched.submit(rig) for _ in range(210)]]
        wall = time.perf_counter() - start
        counts = Counter(fr.workers[0] for fr in frames)
        # ideal: every worker busy all the time at its own measured speed
        mean_ms = {name: np.mean([fr.timings.render_ms for fr in frames if fr.workers[0] == name]) for name in counts}
        ideal_fps = sum(1e3 / ms for ms in mean_ms.values())
        fps = len(frames) / wall
        assert fps >= 0.9 * ideal_fps, (fps, ideal_fps, counts)
        total = sum(speeds)
        for s in speeds:
            share = counts[f"x{s:g}"] / len(frames)
            assert share == pytest.approx(s / total, abs=0.1 * s / total + 0.02), counts


def test_each_job_goes_to_the_worker_predicted_to_finish_first():
    # fast: 16 ms per stereo frame, slow: 40 ms
    fast = SimulatedWorker(speed=2.5, ms_per_mpix=eye_ms(20.0), name="fast")
    slow = SimulatedWorker(speed=1.0, ms_per_mpix=eye_ms(20.0), name="slow")
    rig = make_rig()
    key = CostKey("default", 64, 48, 2)
    with Scheduler([slow, fast], mode="frame-parallel", config=SchedulerConfig(max_inflight=2)) as sched:
        sched.wait_ready(10)
        for f in [sched.submit(rig) for _ in range(8)]:
            f.result(10)
        assert sched.costs.measured("fast", key) < 0.6 * sched.costs.measured("slow", key)
        # two at once: fast finishes them at 16 and 32 ms, before slow would finish one (40): both go to fast
        frames = [f.result(10) for f in [sched.submit(rig) for _ in range(2)]]
        assert [fr.workers[0] for fr in frames] == ["fast", "fast"]
        # five at once: fast at 16, 32, (48); slow at 40 takes the third; fast then 48 and 64 (slow: 80)
        frames = [f.result(10) for f in [sched.submit(rig) for _ in range(5)]]
        assert [fr.workers[0] for fr in frames] == ["fast", "fast", "slow", "fast", "fast"]


def test_auto_mode_splits_eyes_for_one_client_and_not_for_a_burst():
    # a stereo frame costs 2 eyes here (+ a fixed part per job): eye-split halves the latency of one client
    workers = [SimulatedWorker(ms_per_mpix=eye_ms(20.0), fixed_ms=2.0) for _ in range(2)]
    rig = make_rig()
    with Scheduler(workers, mode="auto") as sched:
        sched.wait_ready(10)
        one_by_one = [sched.render(rig, timeout=10) for _ in range(10)]
        assert one_by_one[0].mode == "frame-parallel"  # stereo cost unknown: measured first
        assert one_by_one[1].mode == "eye-split"  # eye cost unknown: probed
        assert all(fr.mode == "eye-split" for fr in one_by_one[2:])
        assert sched.last_decision.mode == "eye-split"
        split = one_by_one[-1]
        assert split.image.shape == (2, 48, 64, 3) and split.workers[0] != split.workers[1]
        burst = [f.result(10) for f in [sched.submit(rig) for _ in range(12)]]
        assert Counter(fr.mode for fr in burst)["frame-parallel"] >= 10  # throughput-bound: whole frames


def test_eye_split_mode_assembles_both_eyes_in_order():
    workers = [SimulatedWorker(ms_per_mpix=eye_ms(2.0), name=n) for n in ("a", "b")]
    with Scheduler(workers, mode="eye-split") as sched:
        sched.wait_ready(10)
        frame = sched.render(make_rig(), render_mode="rgb+depth", timeout=10)
    assert frame.mode == "eye-split" and sorted(frame.workers) == ["a", "b"]
    assert frame.image.shape == (2, 48, 64, 3) and frame.depth.shape == (2, 48, 64, 1)
    assert frame.depth[0].max() == 0 and frame.depth[1].min() == 1  # part index per eye, in eye order


def test_elastic_scaling_follows_a_scripted_load_change():
    elastic = ElasticConfig(target_fps=20.0, add_after_s=0.3, release_after_s=0.6, cooldown_s=0.4,
                            release_margin=1.2)
    cfg = SchedulerConfig(mode="frame-parallel", elastic=elastic, tick_s=0.02)
    # light frames cost 2 x 15 ms (33 FPS per worker); heavy ones 2 x 40 ms (12.5 FPS per worker)
    light = make_rig(32, 32)
    scale = 40.0 / 15.0
    heavy = make_rig(32, round(32 * scale))
    workers = [SimulatedWorker(ms_per_mpix=eye_ms(15.0, 32, 32), name=f"g{i}") for i in range(3)]
    with Scheduler(workers, config=cfg) as sched:
        sched.wait_ready(10)

        def run(rig, seconds):
            end = time.monotonic() + seconds
            futures = []
            while time.monotonic() < end:
                futures = [f for f in futures if not f.done()]
                while len(futures) < 4:
                    futures.append(sched.submit(rig))
                time.sleep(0.005)
            for f in futures:
                f.result(10)

        run(light, 1.0)
        assert [e.action for e in sched.events() if e.action in ("add", "release")] == []
        run(heavy, 2.0)
        scaling = [e.action for e in sched.events() if e.action in ("add", "release")]
        assert scaling == ["add"], sched.events()  # 2 x 12.5 FPS hold 20; no third worker, no flapping
        assert sum(w.state == "ready" for w in sched.workers()) == 2
        run(light, 2.0)
        scaling = [e.action for e in sched.events() if e.action in ("add", "release")]
        assert scaling == ["add", "release"], sched.events()
        assert sum(w.state == "ready" for w in sched.workers()) == 1
        assert sched.stats().failed == 0


def test_operator_adds_and_removes_workers_while_running():
    rig = make_rig()
    with Scheduler([SimulatedWorker(ms_per_mpix=eye_ms(5.0), name="first")]) as sched:
        sched.wait_ready(10)
        futures = [sched.submit(rig) for _ in range(20)]
        name = sched.add_worker(SimulatedWorker(ms_per_mpix=eye_ms(5.0), name="second"))
        futures += [sched.submit(rig) for _ in range(20)]
        sched.remove_worker("first", wait=True, timeout=10)
        assert [w.name for w in sched.workers()] == [name]
        futures += [sched.submit(rig) for _ in range(10)]
        frames = [f.result(10) for f in futures]
        assert [fr.request_id for fr in frames] == list(range(50))
        used = Counter(fr.workers[0] for fr in frames)
        assert used["second"] > 0 and used["first"] > 0
        assert all(fr.workers[0] == "second" for fr in frames[40:])  # nothing went to the removed one
        with pytest.raises(ValueError, match="no worker named 'first'"):
            sched.remove_worker("first")
        actions = [e.action for e in sched.events()]
        assert "operator-add" in actions and "operator-remove" in actions


def test_clear_errors():
    worker = SimulatedWorker(ms_per_mpix=eye_ms(1.0), fail_requests=(1,), scenes=("guitar",))
    sched = Scheduler([worker])
    sched.wait_ready(10)
    assert sched.render(make_rig(), scene="guitar", timeout=10).request_id == 0
    with pytest.raises(FrameRenderError, match="request 1: worker w0 failed to render it: RuntimeError: simulated"):
        sched.render(make_rig(), scene="guitar", timeout=10)
    assert sched.render(make_rig(), scene="guitar", timeout=10).request_id == 2  # the worker goes on
    with pytest.raises(ValueError, match="no worker holds scene 'default'"):
        sched.submit(make_rig())
    with pytest.raises(ValueError, match="render_mode"):
        sched.submit(make_rig(), scene="guitar", render_mode="normals")
    with pytest.raises(ValueError, match="view: expected a Camera"):
        sched.submit("left eye", scene="guitar")
    with pytest.raises(ValueError, match="transport"):
        _Scheduler([worker], transport="mpi")
    sched.close()
    with pytest.raises(SchedulerClosedError):
        sched.submit(make_rig(), scene="guitar")


# ----- real processes -----------------------------------------------------------------------------------------------
def test_killed_worker_process_loses_no_request():
    workers = [SimulatedWorker(ms_per_mpix=eye_ms(8.0), name=n) for n in ("a", "b")]
    cfg = SchedulerConfig(mode="frame-parallel", restart_delay_s=0.05)
    sched = _Scheduler(workers, transport="process", config=cfg)
    pids = []
    try:
        sched.wait_ready(120)
        rig = make_rig()
        futures = [sched.submit(rig) for _ in range(40)]
        time.sleep(0.15)
        victim = next(w for w in sched.workers() if w.name == "a")
        pids.append(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)
        futures += [sched.submit(rig) for _ in range(40)]
        frames = [f.result(120) for f in futures]
        ids = [fr.request_id for fr in frames]
        assert ids == list(range(80))  # every request, once, in submit order of futures
        assert all(fr.image[0, 0, 0, 0] == fr.request_id for fr in frames)  # each frame is its own request's
        stats = sched.stats()
        assert stats.completed == 80 and stats.failed == 0
        events = [(e.action, e.worker) for e in sched.events()]
        assert ("died", "a") in events and ("restart", "a") in events
        died = next(e for e in sched.events() if e.action == "died")
        assert "SIGKILL" in died.reason
        sched.wait_ready(120, count=2)
        info = {w.name: w for w in sched.workers()}
        assert info["a"].restarts == 1 and info["a"].pid != victim.pid and info["a"].state == "ready"
        pids += [w.pid for w in sched.workers()]
        assert sched.render(rig, timeout=60).image is not None
    finally:
        sched.close()
    assert_no_children(pids)


@pytest.fixture(scope="module")
def tiny_scene() -> Splats:
    return Splats.random(300, sh_degree=1, seed=3, extent=0.8)


def check_render_workers(transport: str, scene: Splats, names: tuple[str, ...] = ("cpu0", "cpu1")) -> None:
    """Frames of real render workers equal a direct ``render`` (frame-parallel and eye-split); no process is left."""
    workers = [RenderWorker(scene, device="cpu", backend="torch", cache=CacheConfig(enabled=False), name=n,
                            cpu_threads=1) for n in names]
    rigs = [make_rig(40, 32, angle=a) for a in (0.0, 0.3, 0.6)]
    sched = _Scheduler(workers, mode="frame-parallel", transport=transport)
    try:
        sched.wait_ready(120, count=len(names))
        frames = [f.result(120) for f in [sched.submit(r, render_mode="rgb+depth") for r in rigs]]
        split = sched.render(rigs[0], mode="eye-split", timeout=120)
        pids = [w.pid for w in sched.workers()]
    finally:
        sched.close()
    assert_no_children(pids)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (sums split over threads round differently)
    try:
        directs = [render(scene, rig, backend="torch", render_mode="rgb+depth") for rig in rigs]
    finally:
        torch.set_num_threads(threads)
    for frame, direct in zip(frames, directs):
        np.testing.assert_array_equal(frame.image, direct.image.numpy())
        np.testing.assert_array_equal(frame.depth, direct.depth.numpy())
        assert frame.image.dtype == np.float32 and frame.image.flags.writeable
    direct = directs[0]
    assert split.mode == "eye-split" and split.workers[0] != split.workers[1]
    np.testing.assert_array_equal(split.image, direct.image.numpy())
    assert float(direct.image.max()) > 0  # the scene is in view


def test_spawn_render_workers_match_a_direct_render(tiny_scene):
    check_render_workers("process", tiny_scene)


def test_worker_that_cannot_start_is_reported():
    bad = RenderWorker({"default": torch.zeros(3)}, device="cpu", backend="torch", name="bad")  # type: ignore[dict-item]
    with Scheduler([bad]) as sched:
        with pytest.raises(WorkerStartError, match="no worker started: bad: start failed: TypeError"):
            sched.wait_ready(30)
        assert sched.workers()[0].state == "failed"
        with pytest.raises(NoWorkersError, match="no worker holding scene 'default' is running or can be restarted"):
            sched.render(make_rig(), timeout=10)


def test_worker_whose_spec_cannot_be_sent_to_a_process_fails_clearly():
    unpicklable = RenderWorker(lambda: Splats.random(10), backend="torch", name="lam")
    sched = _Scheduler([unpicklable], transport="process")
    try:
        with pytest.raises(WorkerStartError, match="lam: start failed: .*(pickle|Pickling)"):
            sched.wait_ready(30)
    finally:
        sched.close()


class _FakeDriver:
    """Stands in for libcuda's cuMemHostRegister_v2 / cuMemHostUnregister (records calls, refuses when told)."""

    def __init__(self, refuse: bool) -> None:
        self.registered, self.unregistered = [], []

        def register(address, size, flags):
            self.registered.append((address, size, flags))
            return 1 if refuse else 0

        def unregister(address):
            self.unregistered.append(address)
            return 0

        self.cuMemHostRegister_v2, self.cuMemHostUnregister = register, unregister


@pytest.mark.parametrize("refuse", [False, True])
def test_worker_segments_page_lock_for_the_gpu_copy_and_fall_back_when_refused(refuse):
    """A CUDA worker page-locks each shared-memory slot once (re-attaching a grown slot swaps the registration);
    where the driver refuses, the slot stays usable and nothing is unregistered."""
    from multiprocessing.shared_memory import SharedMemory

    from renderer.scheduler.process import _HostRegistration, _WorkerSegments

    fake = _FakeDriver(refuse)
    segments = _WorkerSegments(pin=False)
    segments._driver = _HostRegistration(fake)
    first, grown = SharedMemory(create=True, size=4096), SharedMemory(create=True, size=3 * 4096)
    try:
        seg = segments.attach(0, first.name)
        assert segments.attach(0, first.name) is seg and len(fake.registered) == 1, "registered once per segment"
        address, size, flags = fake.registered[0]
        assert size == seg.size and flags == 0 and address != 0
        np.frombuffer(seg.buf, np.uint8)[:3] = (1, 2, 3)  # still an ordinary mapping
        assert bytes(first.buf[:3]) == b"\x01\x02\x03"
        segments.attach(0, grown.name)  # the parent grew the slot: a new segment
        assert len(fake.registered) == 2
        assert fake.unregistered == ([] if refuse else [address])
        segments.close()
        assert len(fake.unregistered) == (0 if refuse else 2)
    finally:
        for shm in (first, grown):
            shm.close()
            shm.unlink()


def test_worker_segments_stay_pageable_without_a_cuda_driver(monkeypatch):
    from renderer.scheduler import process

    monkeypatch.setattr(process.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(f"{name}: not found")))
    assert process._HostRegistration.load() is None
    assert process._WorkerSegments(pin=True)._driver is None


@pytest.mark.gpu
@pytest.mark.parametrize(("pinned", "frame_format"), [("1", "float32"), ("1", "uint8"), ("0", "float32")])
def test_cuda_workers_return_the_frames_of_a_direct_render(monkeypatch, pinned, frame_format):
    """A spawned CUDA worker (native backend), frames back through page-locked or pageable shared memory: the same
    images as a direct render on the GPU, for every request (uint8: the direct image rounded)."""
    from renderer.scheduler.process import PIN_ENV

    monkeypatch.setenv(PIN_ENV, pinned)  # the spawned worker inherits it
    scene = Splats.random(3000, sh_degree=1, seed=4, extent=0.8)
    worker = RenderWorker(scene, device="cuda:0", backend="native", cache=CacheConfig(enabled=False), name="cuda0")
    rigs = [make_rig(160, 120, angle=a) for a in (0.0, 0.4, 0.8, 1.2)]
    sched = _Scheduler([worker], mode="frame-parallel", transport="process",
                       config=SchedulerConfig(frame_format=frame_format))
    try:
        sched.wait_ready(180)
        frames = [f.result(120) for f in [sched.submit(r) for r in rigs]]
        pids = [w.pid for w in sched.workers()]
    finally:
        sched.close()
    assert_no_children(pids)
    cuda_scene = scene.to("cuda")
    for frame, rig in zip(frames, rigs):
        direct = render(cuda_scene, rig, backend="native").image
        if frame_format == "uint8":
            direct = (direct.clamp(0, 1) * 255).round().to(torch.uint8)
        np.testing.assert_array_equal(frame.image, direct.cpu().numpy())
        assert frame.image.dtype == (np.uint8 if frame_format == "uint8" else np.float32)
        assert int(direct.max()) > 0 if frame_format == "uint8" else float(direct.max()) > 0


def test_switches_read_off_values_and_default_to_on(monkeypatch):
    from renderer.switches import turned_off

    monkeypatch.delenv("GSCACHE_TEST_SWITCH", raising=False)
    assert not turned_off("GSCACHE_TEST_SWITCH")
    for value, off in [("0", True), (" OFF ", True), ("No", True), ("false", True), ("1", False), ("yes", False)]:
        monkeypatch.setenv("GSCACHE_TEST_SWITCH", value)
        assert turned_off("GSCACHE_TEST_SWITCH") is off, value
