"""The scheduler's pure policy: cost model, earliest-finish assignment, mode choice, elastic controller, configs."""

from __future__ import annotations

import pytest

from renderer.scheduler import (
    CostConfig,
    CostKey,
    CostModel,
    ElasticConfig,
    ElasticController,
    ElasticSample,
    SchedulerConfig,
    WorkerLoad,
    choose_mode,
    pick_earliest_finish,
)

STEREO = CostKey("guitar", 100, 100, 2)
EYE = CostKey("guitar", 100, 100, 1)


def test_cost_model_running_average_and_priors():
    model = CostModel(CostConfig(smoothing=0.5, prior_ms=3.0))
    assert model.predict("a", STEREO) == 3.0  # nothing known anywhere
    model.observe("a", STEREO, 10.0)
    model.observe("a", STEREO, 20.0)
    assert model.measured("a", STEREO) == pytest.approx(15.0)
    assert model.samples("a", STEREO) == 2
    # a never-measured workload of a measured worker: its ms per pixel times the pixels
    assert model.predict("a", EYE) == pytest.approx(model.predict("a", STEREO) / 2, rel=0.2)
    # a never-measured worker: the fastest other worker's time (optimistic, so it gets tried)
    model.observe("b", STEREO, 40.0)
    assert model.predict("c", STEREO) == pytest.approx(15.0)
    # b is known to be slower per pixel: its prediction for a new workload is scaled accordingly
    model.observe("a", EYE, 5.0)
    assert model.predict("b", EYE) > model.predict("a", EYE) * 2
    model.forget("b")
    assert model.measured("b", STEREO) is None


def test_earliest_finish_prefers_the_fast_busy_worker_and_waits_for_it():
    now = 100.0
    fast = WorkerLoad("fast", free_at=now + 0.010, job_ms=10.0, in_flight=1, has_slot=True)
    slow = WorkerLoad("slow", free_at=now, job_ms=40.0, in_flight=0, has_slot=True)
    choice = pick_earliest_finish([fast, slow], now)
    assert choice.worker == "fast" and choice.now
    assert choice.finish_at == pytest.approx(now + 0.020)
    # the fast one has no slot: the job waits for it rather than going to the slow one
    full = WorkerLoad("fast", free_at=now + 0.020, job_ms=10.0, in_flight=2, has_slot=False)
    choice = pick_earliest_finish([full, slow], now)
    assert choice.worker == "fast" and not choice.now
    # once the slow one would finish first, it gets the job
    busy = WorkerLoad("fast", free_at=now + 0.050, job_ms=10.0, in_flight=2, has_slot=False)
    assert pick_earliest_finish([busy, slow], now).worker == "slow"
    # ties go to the less loaded worker; no candidate gives None
    a = WorkerLoad("a", now, 5.0, 1, True)
    b = WorkerLoad("b", now, 5.0, 0, True)
    assert pick_earliest_finish([a, b], now).worker == "b"
    assert pick_earliest_finish([], now) is None


@pytest.mark.parametrize(
    ("stereo", "eye", "demand", "concurrency", "expected", "why"),
    [
        ([10.0, 10.0], [5.5, 5.5], None, 1, "eye-split", "latency"),  # one client: halve the latency
        ([10.0, 10.0], [5.5, 5.5], 300.0, 1, "frame-parallel", "capacity"),  # 2 x 5.5 ms per frame < 300 FPS
        ([10.0, 10.0], [5.5, 5.5], None, 4, "frame-parallel", "in flight"),  # many clients: throughput
        ([10.0, 10.0], [9.5, 9.5], None, 1, "frame-parallel", "cut latency"),  # eyes cost nearly a frame
        ([10.0], [5.0], None, 1, "frame-parallel", "fewer than two"),
    ],
)
def test_choose_mode_from_measured_costs(stereo, eye, demand, concurrency, expected, why):
    decision = choose_mode(stereo, eye, demand_fps=demand, concurrency=concurrency, gain=0.1)
    assert decision.mode == expected
    assert why in decision.reason
    if len(stereo) > 1:
        assert decision.split_latency_ms == pytest.approx(max(eye))
        assert decision.frame_capacity_fps == pytest.approx(sum(1e3 / s for s in stereo))


def _sample(t: float, fps: list[float], starting: int = 0, standby: int = 2) -> ElasticSample:
    return ElasticSample(t, {f"w{i}": v for i, v in enumerate(fps)}, starting, standby)


def test_elastic_controller_follows_a_scripted_load_with_hysteresis():
    cfg = ElasticConfig(target_fps=60.0, add_after_s=0.5, release_after_s=1.0, cooldown_s=1.0, release_margin=1.2)
    ctl = ElasticController(cfg)
    script = []  # (time, per-worker FPS, starting) -> expected action
    t = 0.0
    for _ in range(10):  # light load: one worker at 100 FPS holds the target
        script.append((t, [100.0], 0, "hold"))
        t += 0.1
    for i in range(6):  # heavy load: 40 FPS per worker, under target; add after 0.5 s
        script.append((t, [40.0], 0, "add" if i == 5 else "hold"))
        t += 0.1
    script.append((t, [40.0], 1, "hold"))  # the new worker is starting
    t += 0.1
    for _ in range(12):  # 2 x 40 = 80 FPS: above target; without one 40 < 72: no release, no flapping
        script.append((t, [40.0, 40.0], 0, "hold"))
        t += 0.1
    for i in range(12):  # light again: 2 x 100; the other alone holds 100 >= 72 for 1 s -> release
        script.append((t, [100.0, 100.0], 0, "release" if i == 10 else "hold"))
        t += 0.1
    for _ in range(20):  # one worker, 100 FPS: inside the band, nothing moves
        script.append((t, [100.0], 0, "hold"))
        t += 0.1
    actions = [ctl.step(_sample(time, fps, starting)).action for time, fps, starting, _ in script]
    assert actions == [expected for *_, expected in script]


def test_elastic_controller_respects_bounds_and_cooldown():
    cfg = ElasticConfig(target_fps=100.0, add_after_s=0.0, release_after_s=0.0, cooldown_s=1.0, max_workers=2)
    ctl = ElasticController(cfg)
    assert ctl.step(_sample(0.0, [10.0])).action == "add"
    assert ctl.step(_sample(0.5, [10.0, 10.0])).action == "hold"  # cooling down
    assert ctl.step(_sample(2.0, [10.0, 10.0])).action == "hold"  # at max_workers
    assert ctl.step(_sample(3.0, [10.0], standby=0)).action == "hold"  # nothing to add
    release = ctl.step(_sample(4.0, [500.0, 300.0]))
    assert release.action == "release" and release.worker == "w1"  # the slower one goes
    assert ctl.step(_sample(6.0, [500.0])).action == "hold"  # min_workers


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ElasticConfig(target_fps=0.0), "target_fps"),
        (lambda: ElasticConfig(target_fps=60.0, release_margin=1.0), "release_margin"),
        (lambda: ElasticConfig(target_fps=60.0, min_workers=3, max_workers=2), "max_workers"),
        (lambda: SchedulerConfig(mode="split"), "mode: expected one of auto"),
        (lambda: SchedulerConfig(max_inflight=0), "max_inflight"),
        (lambda: SchedulerConfig(frame_format="png"), "frame_format"),
        (lambda: CostConfig(smoothing=0.0), "smoothing"),
    ],
)
def test_config_errors_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()
