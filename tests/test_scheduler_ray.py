"""The scheduler over Ray actors on a local Ray instance (``ray.init(num_cpus=2)``): the same core tests as over
local processes. Skipped when Ray is not installed (it is the optional extra ``gscache[cluster]``)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import numpy as np
import pytest
from test_scheduler import assert_no_children, check_render_workers, eye_ms, make_rig

from renderer import Splats
from renderer.scheduler import Scheduler, SchedulerConfig, SimulatedWorker

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'gscache[cluster]'")


@pytest.fixture(scope="module")
def local_ray():
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a loopback-only test instance: no token file in the home folder
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def test_ray_unequal_workers_proportional_and_earliest_finish(local_ray):
    speeds = (1.0, 2.0, 4.0)
    workers = [SimulatedWorker(speed=s, ms_per_mpix=eye_ms(80.0), name=f"x{s:g}") for s in speeds]
    rig = make_rig()
    # a Ray call's round trip is a few ms on 2 cores: frames of 20-80 ms keep it small; queue 3 per worker
    cfg = SchedulerConfig(mode="frame-parallel", max_inflight=3)
    with Scheduler(workers, transport="ray", config=cfg) as sched:
        sched.wait_ready(120, count=3)
        for f in [sched.submit(rig) for _ in range(14)]:
            f.result(60)
        # earliest finish: one request at a time always goes to the fastest worker
        assert {sched.render(rig, timeout=60).workers[0] for _ in range(3)} == {"x4"}
        start = time.perf_counter()
        # 210 frames: the slow worker's last queued frames (up to 3 x 80 ms) are a small tail of the run
        frames = [f.result(60) for f in [sched.submit(rig) for _ in range(210)]]
        wall = time.perf_counter() - start
        pids = [w.pid for w in sched.workers()]
    counts = Counter(fr.workers[0] for fr in frames)
    mean_ms = {name: np.mean([fr.timings.render_ms for fr in frames if fr.workers[0] == name]) for name in counts}
    ideal_fps = sum(1e3 / ms for ms in mean_ms.values())
    assert len(frames) / wall >= 0.9 * ideal_fps, (len(frames) / wall, ideal_fps, counts)
    for s in speeds:
        assert counts[f"x{s:g}"] / len(frames) == pytest.approx(s / sum(speeds), abs=0.1 * s / sum(speeds) + 0.03)
    assert_no_children(pids)


def test_ray_killed_actor_loses_no_request(local_ray):
    workers = [SimulatedWorker(ms_per_mpix=eye_ms(8.0), name=n) for n in ("a", "b")]
    cfg = SchedulerConfig(mode="frame-parallel", restart_delay_s=0.05)
    with Scheduler(workers, transport="ray", config=cfg) as sched:
        sched.wait_ready(120, count=2)
        rig = make_rig()
        futures = [sched.submit(rig) for _ in range(30)]
        time.sleep(0.1)
        victim = next(w for w in sched.workers() if w.name == "a")
        os.kill(victim.pid, signal.SIGKILL)
        futures += [sched.submit(rig) for _ in range(30)]
        frames = [f.result(120) for f in futures]
        assert [fr.request_id for fr in frames] == list(range(60))
        assert all(fr.image[0, 0, 0, 0] == fr.request_id for fr in frames)
        assert sched.stats().failed == 0
        assert ("died", "a") in [(e.action, e.worker) for e in sched.events()]
        sched.wait_ready(120, count=2)
        info = {w.name: w for w in sched.workers()}
        assert info["a"].restarts == 1 and info["a"].pid != victim.pid
        pids = [victim.pid] + [w.pid for w in sched.workers()]
    assert_no_children(pids)


def test_ray_render_workers_match_a_direct_render(local_ray):
    check_render_workers("ray", Splats.random(300, sh_degree=1, seed=3, extent=0.8))
