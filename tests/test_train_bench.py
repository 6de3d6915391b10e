"""benchmarks/train_bench.py (the GPU training runs behind benchmarks/train_gpu.sh), exercised on the CPU with the
torch backend on a tiny fixture: result rows, merging of two calls, the comparison, SIGKILL + resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("gsplat")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import train_bench  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "train"
TINY = "--cpu-threads 1 --init.random-points 300 --sh-degree 1"


@pytest.fixture()
def data_dir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / train_bench.LEGO).symlink_to(FIX / "nerf_synthetic")
    return tmp_path / "data"


def _run(tmp_path, data_dir, *args: str) -> dict:
    out = tmp_path / "out"
    rc = train_bench.main([*args, "--device", "cpu", "--extra", TINY, "--data-dir", str(data_dir), "--out-dir",
                           str(out), "--work-dir", str(tmp_path / "work"), "--log-every", "2"])
    files = sorted(out.glob(f"*-train-{args[0]}.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())
    result["rc"] = rc
    return result


def test_smoke_then_merge_and_compare(tmp_path, data_dir):
    first = _run(tmp_path, data_dir, "lego", "--backends", "torch", "--steps", "4")
    row = first["rows"][0]
    assert first["rc"] == 0 and row["status"] == "ok" and row["backend"] == "torch" and row["steps"] == 4
    assert row["psnr"] > 0 and row["eval_split"] == "test" and row["wall_s"] > 0 and row["loop_s"] >= 0
    assert set(first) >= {"command", "revision", "gpu", "date", "rows", "comparison"}
    assert (tmp_path / "out" / "train-lego.log").read_text().count("step 4 loss") == 1
    carried = tmp_path / "carried"
    carried.mkdir()
    for path in (tmp_path / "out").glob("*.json"):
        path.rename(carried / path.name)
    second = _run(tmp_path, data_dir, "lego", "--backends", "auto", "--steps", "4", "--merge", str(carried))
    assert [r["backend"] for r in second["rows"]] == ["auto", "torch"] and "merged_from" in second["rows"][1]


def test_compare_targets():
    rows = [{"backend": "native", "status": "ok", "psnr": 30.0, "ssim": 0.95, "wall_s": 70.0, "loop_s": 60.0},
            {"backend": "gsplat", "status": "ok", "psnr": 30.15, "ssim": 0.951, "wall_s": 100.0, "loop_s": 90.0}]
    c = train_bench.compare(rows, "native", "gsplat")
    assert c["psnr_within_0.2db"] and c["wall_ratio_at_most_0.8"] and c["wall_ratio"] == pytest.approx(0.7)
    rows[0]["wall_s"] = 90.0
    assert not train_bench.compare(rows, "native", "gsplat")["wall_ratio_at_most_0.8"]
    assert train_bench.compare(rows[:1], "native", "gsplat") == {"missing": ["gsplat"]}


def test_last_step_of_a_log(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("training ...\nstep 100 loss 0.1000 PSNR 20.50 1,234 Gaussians 55.10 it/s\n"
                   "step 200 loss 0.0900 PSNR 21.00 2,345 Gaussians 56.00 it/s\nstep 2")
    assert train_bench.last_step(log) == {"step": 200, "loss": 0.09, "psnr": 21.0, "gaussians": 2345,
                                          "it_per_s": 56.0}


def test_resume_mode_kills_and_resumes(tmp_path, data_dir):
    result = _run(tmp_path, data_dir, "resume", "--backends", "torch", "--steps", "40", "--checkpoint-every", "10")
    c = result["comparison"]
    assert result["rc"] == 0 and c["within_0.1db"] and c["no_partial_files_after_resume"]
    assert c["kill"]["killed_after_logged_step"] >= 20 and c["after_kill"]["checkpoint_step"] >= 10
    assert not c["after_kill"]["finished"] and c["after_resume"]["finished"]
    assert c["psnr_diff_db"] == 0.0  # on the CPU the resumed run is bit-exact
