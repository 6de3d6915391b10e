"""Trainer: SSIM, a tiny end-to-end run, densification, exact resume, atomic outputs, the CLI and its errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gsplat")
pytest.importorskip("pycolmap")
pytest.importorskip("open3d")

from data import load_dataset, load_scene  # noqa: E402
from data.scene_cameras import open_scene_cameras  # noqa: E402
from training.atomic import write_json_atomic  # noqa: E402
from training.cli import Train  # noqa: E402
from training.config import DataConfig, DefaultStrategyConfig, MCMCStrategyConfig, preset, with_overrides  # noqa: E402
from training.losses import photometric_loss, psnr, ssim  # noqa: E402
from training.params import splats_from_params, step_optimizers  # noqa: E402
from training.trainer import Trainer, open_dataset  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures" / "train"
DATA = FIX / "synthetic"
NO_REFINE = DefaultStrategyConfig(refine_start_iter=10_000)


def _config(**changes):
    return dataclasses.replace(preset("test"), device="cpu", backend="torch", **changes)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The renders here are tiny: one thread avoids OpenMP overhead (and oversubscription on busy CI machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset():
    return open_dataset(DATA, _config())


# ----- SSIM -----------------------------------------------------------------------------------------------------
def _ssim_reference(a: np.ndarray, b: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """Float64 SSIM with explicit loops over window offsets (zero padding), per channel."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    r = size // 2

    def blur(img):
        h, wd = img.shape
        padded = np.pad(img, r)
        out = np.zeros_like(img)
        for dy in range(size):
            for dx in range(size):
                out += w[dy, dx] * padded[dy:dy + h, dx:dx + wd]
        return out

    values = []
    for c in range(a.shape[-1]):
        p, q = a[..., c], b[..., c]
        mp, mq = blur(p), blur(q)
        vp, vq, cov = blur(p * p) - mp**2, blur(q * q) - mq**2, blur(p * q) - mp * mq
        c1, c2 = 0.01**2, 0.03**2
        values.append(((2 * mp * mq + c1) * (2 * cov + c2)) / ((mp**2 + mq**2 + c1) * (vp + vq + c2)))
    return float(np.mean(values))


def test_ssim_identical_is_one_and_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(20, 26, 3, generator=g)
    b = (a + 0.1 * torch.randn(20, 26, 3, generator=g)).clamp(0, 1)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(a, b).item() == pytest.approx(_ssim_reference(a.double().numpy(), b.double().numpy()), abs=1e-5)
    assert ssim(a.double(), b.double()).item() == pytest.approx(
        _ssim_reference(a.double().numpy(), b.double().numpy()), abs=1e-10)
    assert psnr(a, a) == math.inf and psnr(torch.zeros(4, 4, 3), torch.full((4, 4, 3), 0.1)) == pytest.approx(20.0)
    terms = photometric_loss(a, b, 0.2)
    assert terms.total.item() == pytest.approx(0.8 * terms.l1.item() + 0.2 * (1 - terms.ssim.item()))


# ----- training -------------------------------------------------------------------------------------------------
def _scores(trainer: Trainer) -> tuple[float, float]:
    """Mean loss and PSNR over the training images."""
    from renderer import render

    splats = splats_from_params(trainer.params).detach()
    losses, psnrs = [], []
    for frame in trainer.dataset.train:
        image = render(splats, frame.camera, backend="torch", sh_degree=trainer.config.sh_degree).image[0]
        target = trainer.dataset.image(frame)
        losses.append(photometric_loss(image, target, 0.2).total.item())
        psnrs.append(psnr(image, target))
    return float(np.mean(losses)), float(np.mean(psnrs))


def test_direct_fused_adam_step_is_adams_own(tmp_path):
    """step_optimizers (the fused kernel called directly) gives bit-identical parameters and states to
    Adam(fused=True).step(), over steps where a gradient is missing and where a parameter is replaced (as the
    densification strategies do); non-fused optimizers go through Optimizer.step."""
    g = torch.Generator().manual_seed(0)

    def build(fused: bool) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.optim.Adam]]:
        torch.manual_seed(1)
        params = {k: torch.nn.Parameter(torch.randn(n, 3)) for k, n in (("a", 5), ("b", 7), ("c", 2))}
        opts = {k: torch.optim.Adam([{"params": p, "lr": lr, "name": k}], eps=1e-15, fused=fused or None)
                for (k, p), lr in zip(params.items(), (0.1, 0.01, 0.003))}
        return params, opts

    ref_params, ref_opts = build(True)
    our_params, our_opts = build(True)
    plain_params, plain_opts = build(False)
    for step in range(6):
        grads = {k: torch.randn(p.shape, generator=g) for k, p in ref_params.items()}
        if step == 3:  # a strategy replaced "b" by a longer tensor and carried its Adam state over
            for params, opts in ((ref_params, ref_opts), (our_params, our_opts), (plain_params, plain_opts)):
                old, opt = params["b"], opts["b"]
                new = torch.nn.Parameter(torch.cat([old.detach(), old.detach()[:2]]))
                state = opt.state.pop(old)
                opt.state[new] = {k: (torch.cat([v, v[:2]]) if v.dim() else v) for k, v in state.items()}
                opt.param_groups[0]["params"] = [new]
                params["b"] = new
            grads["b"] = torch.randn(params["b"].shape, generator=g)
        for params in (ref_params, our_params, plain_params):
            for k, p in params.items():
                p.grad = None if (step == 2 and k == "c") else grads[k].clone()
        for opt in ref_opts.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        step_optimizers(our_opts)
        step_optimizers(plain_opts)
        for k in ref_params:
            assert torch.equal(our_params[k], ref_params[k]), (step, k)
            assert our_params[k].grad is None and plain_params[k].grad is None
            torch.testing.assert_close(plain_params[k], ref_params[k], rtol=1e-5, atol=1e-6)
            ref_state, our_state = ref_opts[k].state[ref_params[k]], our_opts[k].state[our_params[k]]
            for name in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(our_state[name], ref_state[name]), (step, k, name)
    assert float(our_opts["a"].state[our_params["a"]]["step"]) == 6.0
    assert float(our_opts["c"].state[our_params["c"]]["step"]) == 5.0  # no gradient at step 2


def test_end_to_end_loss_decreases_and_psnr_increases(tmp_path, dataset):
    trainer = Trainer(_config(strategy=NO_REFINE), DATA, tmp_path, dataset=dataset)
    loss0, psnr0 = _scores(trainer)
    result = trainer.train()
    loss1, psnr1 = _scores(trainer)
    assert result.finished and result.step == 60
    assert loss1 < 0.8 * loss0 and psnr1 > psnr0 + 2.0
    assert result.last_eval is not None and result.last_eval.split == "test" and result.last_eval.frames == 2
    assert result.last_eval.lpips is None or result.last_eval.lpips >= 0
    assert all(Path(p).is_file() for p in result.last_eval.images)


def test_densification_changes_the_count(tmp_path, dataset):
    strategy = DefaultStrategyConfig(refine_start_iter=2, refine_every=3, refine_stop_iter=8, reset_every=100_000)
    trainer = Trainer(_config(steps=8, strategy=strategy), DATA, tmp_path, dataset=dataset)
    before = trainer.num_gaussians
    trainer.train()
    assert trainer.num_gaussians != before
    assert trainer.strategy_state["grad2d"] is not None


def test_resume_gives_the_same_parameters(tmp_path, dataset):
    config = _config(steps=30, checkpoint_every=10)  # densifies at step 20
    straight = Trainer(config, DATA, tmp_path / "a", dataset=dataset)
    straight.train()
    killed = Trainer(config, DATA, tmp_path / "b", dataset=dataset)
    stopped = killed.train(stop_at=14)  # "killed" after step 14: the checkpoint of step 10 survives
    assert not stopped.finished and not (tmp_path / "b" / "scene.ply").exists()
    torch.manual_seed(1234)  # a fresh process's RNG differs; resume must restore it
    resumed = Trainer(config, DATA, tmp_path / "b", dataset=dataset, resume=True)
    assert resumed.step == 10
    result = resumed.train()
    assert result.finished and resumed.num_gaussians == straight.num_gaussians > 380
    for key in straight.params:
        assert torch.equal(straight.params[key], resumed.params[key]), key
    for key in straight.optimizers:
        a, b = straight.optimizers[key].state_dict()["state"][0], resumed.optimizers[key].state_dict()["state"][0]
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and torch.equal(a["step"], b["step"])


def test_resume_refuses_another_configuration(tmp_path, dataset):
    Trainer(_config(steps=10, checkpoint_every=5), DATA, tmp_path, dataset=dataset).train(stop_at=5)
    changed = dataclasses.replace(_config(steps=10, checkpoint_every=5), seed=7)
    with pytest.raises(ValueError, match="differs from the checkpoint's in seed"):
        Trainer(changed, DATA, tmp_path, dataset=dataset, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(changed, DATA, tmp_path / "empty", dataset=dataset, resume=True)


def test_resume_with_fewer_steps_finishes_and_exports(tmp_path, dataset):
    Trainer(_config(steps=10, checkpoint_every=5), DATA, tmp_path, dataset=dataset).train(stop_at=7)
    result = Trainer(_config(steps=5, checkpoint_every=5), DATA, tmp_path, dataset=dataset, resume=True).train()
    assert result.finished and result.step == 5 and result.last_eval is not None and result.last_eval.step == 5
    assert json.loads(result.metrics_path.read_text())["eval"]["step"] == 5


def test_outputs_are_complete_and_atomic(tmp_path, dataset):
    result = Trainer(_config(steps=4, strategy=NO_REFINE), DATA, tmp_path, dataset=dataset).train()
    scene = load_scene(result.scene_path)
    assert len(scene) == result.num_gaussians and scene.sh_degree == 1
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["step"] == 4 and metrics["eval"]["psnr"] > 0 and "lpips" in metrics["eval"]
    assert metrics["config"]["strategy"]["name"] == "DefaultStrategy"
    cameras = open_scene_cameras(result.scene_path)  # the run's cameras.json: where viewers start
    assert cameras is not None and len(cameras) == len(dataset.train) + len(dataset.test)
    assert not [p for p in tmp_path.rglob("*.tmp")]
    before = result.metrics_path.read_text()

    def failing_replace(src, dst):
        raise OSError("disk full")

    original = os.replace
    os.replace = failing_replace
    try:
        with pytest.raises(OSError, match="disk full"):
            write_json_atomic(result.metrics_path, {"broken": True})
    finally:
        os.replace = original
    assert result.metrics_path.read_text() == before and not [p for p in tmp_path.rglob("*.tmp")]


def test_one_process_per_run_directory(tmp_path, dataset):
    from training.atomic import run_lock

    with run_lock(tmp_path):
        with pytest.raises(ValueError, match=f"another training process \\(pid {os.getpid()}\\)"):
            Trainer(_config(steps=2), DATA, tmp_path, dataset=dataset).train()
    assert Trainer(_config(steps=1, strategy=NO_REFINE), DATA, tmp_path, dataset=dataset).train().finished


def test_mcmc_on_cpu_is_refused_with_a_reason(tmp_path, dataset):
    with pytest.raises(ValueError, match="MCMCStrategy needs CUDA"):
        Trainer(_config(strategy=MCMCStrategyConfig()), DATA, tmp_path, dataset=dataset)


def test_nerf_synthetic_random_init(tmp_path):
    config = _config(steps=2, strategy=NO_REFINE, data=DataConfig())
    trainer = Trainer(config, FIX / "nerf_synthetic", tmp_path)
    assert trainer.num_gaussians == 2000 and trainer.dataset.background == (1.0, 1.0, 1.0)
    assert trainer.params["means"].abs().max() <= 1.3
    assert trainer.train().finished


# ----- configuration and CLI ------------------------------------------------------------------------------------
def test_preset_with_explicit_overrides():
    import tyro

    args = [str(DATA), "--out", "run", "--preset", "cpu", "--steps", "100", "--data.test-every", "4"]
    config = tyro.cli(Train, args=args).resolved_config()
    assert config.steps == 100 and config.data.test_every == 4 and config.data.downscale == 2
    assert config.strategy.refine_start_iter == 200
    mcmc = with_overrides(preset("mcmc"), preset("default"))
    assert isinstance(mcmc.strategy, MCMCStrategyConfig) and mcmc.optim.opacity_reg == 0.01


def test_cli_train_and_bad_input(tmp_path, capsys):
    from gscache.cli import main

    out = tmp_path / "run"
    args = ["train", str(DATA), "--out", str(out), "--preset", "test", "--steps", "3", "--device", "cpu",
            "--backend", "torch", "strategy:default", "--strategy.refine-start-iter", "100"]
    assert main(args) == 0
    assert (out / "scene.ply").is_file() and (out / "metrics.json").is_file()
    assert main(["train", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert load_dataset(DATA).train  # the fixture is untouched
