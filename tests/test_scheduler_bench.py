"""``benchmarks/multi_gpu.py`` on CPU, with simulated workers in place of GPUs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def multi_gpu():
    spec = importlib.util.spec_from_file_location("multi_gpu_bench", ROOT / "benchmarks" / "multi_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_multi_gpu_benchmark_simulated(multi_gpu, tmp_path, capsys):
    argv = ["--simulate", "--transport", "thread", "--gpus", "1", "2", "--width", "64", "--height", "48",
            "--warmup-frames", "2", "--timed-frames", "16", "--sim-frame-ms", "20", "--scene", "sim",
            "--latency-scene", "sim", "--out-dir", str(tmp_path)]
    assert multi_gpu.main(argv) == 0
    written = list(tmp_path.glob("*-simulated-multi-gpu-sim.json"))
    assert len(written) == 1
    if importlib.util.find_spec("matplotlib") is not None:
        assert written[0].with_suffix(".png").stat().st_size > 1000  # the plot beside it
    result = json.loads(written[0].read_text())
    assert set(result) == {"command", "revision", "gpu", "date", "rows"}
    assert result["command"].startswith("python benchmarks/multi_gpu.py --simulate")
    rows = result["rows"]
    assert [(r["mode"], r["gpus"]) for r in rows] == [("frame-parallel", 1), ("frame-parallel", 2),
                                                       ("frame-parallel", 1), ("eye-split", 2)]
    schema = {"scene", "gaussians", "sh_degree", "path", "eyes", "width", "height", "renderer", "gpus", "frames",
              "ms_median", "ms_p90", "ms_p99", "fps", "peak_extra_mib", "psnr_min", "psnr_mean", "reference", "mode"}
    assert all(schema <= set(r) for r in rows)
    assert rows[1]["speedup"] > 1.6  # two simulated GPUs: about twice the frames
    assert rows[3]["latency_ratio"] < 0.75  # each eye is half a frame's work
    out = capsys.readouterr().out
    assert "frame-parallel sim:" in out and "eye-split sim:" in out


def test_multi_gpu_benchmark_rejects_more_gpus_than_there_are(multi_gpu):
    config = multi_gpu.MultiGpuConfig(simulate=False, gpus=(64,), out_dir=None)
    with pytest.raises(ValueError, match="gpus: expected counts in 1.."):
        multi_gpu.run(config)
