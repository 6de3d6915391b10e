"""One native render of a real fixture, forward and backward, for compute-sanitizer (memcheck, racecheck).

Usage: compute-sanitizer --tool memcheck python cuda/tools/native_smoke.py [assets/fixtures/guitar_2k.ply]
Prints a one-line summary; exits non-zero if anything is not finite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from data.scene_io import load_scene  # noqa: E402
from renderer import StereoRig, intrinsics_from_fov, look_at, render  # noqa: E402
from renderer.cameras import Camera  # noqa: E402


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "assets" / "fixtures" / "guitar_2k.ply"
    splats = load_scene(path).to("cuda")
    lo, hi = splats.bounds()
    centre, extent = ((lo + hi) / 2).double().cpu(), float((hi - lo).max())
    k = intrinsics_from_fov(200, 176, 60.0, 95.5, 90.0)
    head = Camera(look_at(centre + torch.tensor([0.3, -0.2, -1.3], dtype=torch.float64) * extent, centre, (0, -1, 0)),
                  k, 200, 176)
    rig = StereoRig(head, 0.064 * extent)
    params = [t.detach().clone().requires_grad_(True) for t in splats._fields().values()]
    from renderer import Splats

    scene = Splats(*params)
    out = render(scene, rig, backend="native", render_mode="rgb+depth", background=(0.2, 0.3, 0.4))
    loss = out.image.square().sum() + out.alpha.sum() + out.depth.sum()
    loss.backward()
    with torch.inference_mode():
        for mode in ("rgb", "depth", "alpha"):
            render(splats, rig, backend="native", render_mode=mode)
    torch.cuda.synchronize()
    ok = all(bool(p.grad.isfinite().all()) for p in params) and bool(out.image.isfinite().all())
    print(f"native_smoke: {path.name} N={len(splats)} pairs={out.stats.tile_keys} visible={out.stats.visible} "
          f"finite={ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
