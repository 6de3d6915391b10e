"""An independent, deliberately simple float64 renderer: every Gaussian at every pixel, in depth order.

It shares no projection or blending code with ``renderer._torch_impl`` (only the SH evaluation, which is checked
on its own in ``test_sh.py``), so agreement between the two is evidence that both compute the 3DGS image.
"""

from __future__ import annotations

import numpy as np
import torch

from renderer import Camera, Splats
from renderer._torch_impl import _eval_sh


def _rotmat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def render_bruteforce(splats: Splats, cam: Camera, background=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Return (image [H, W, 3], alpha [H, W]) in float64."""
    w2c = cam.world_to_camera.double().numpy()
    k = cam.K.double().numpy()
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    rot, trans = w2c[:3, :3], w2c[:3, 3]
    campos = -rot.T @ trans
    means = splats.means.double().numpy()
    sh = splats.sh.double()
    ys, xs = np.mgrid[0:cam.height, 0:cam.width] + 0.5
    entries = []
    for i in range(len(splats)):
        p = rot @ means[i] + trans
        if not cam.near < p[2] < cam.far:
            continue
        r = _rotmat(splats.quats[i].double().numpy())
        s = np.exp(splats.log_scales[i].double().numpy())
        cov3 = r @ np.diag(s * s) @ r.T
        lim_x_pos = (cam.width - cx) / fx + 0.15 * cam.width / fx
        lim_x_neg = cx / fx + 0.15 * cam.width / fx
        lim_y_pos = (cam.height - cy) / fy + 0.15 * cam.height / fy
        lim_y_neg = cy / fy + 0.15 * cam.height / fy
        tx = p[2] * min(lim_x_pos, max(-lim_x_neg, p[0] / p[2]))
        ty = p[2] * min(lim_y_pos, max(-lim_y_neg, p[1] / p[2]))
        jac = np.array([[fx / p[2], 0, -fx * tx / p[2] ** 2], [0, fy / p[2], -fy * ty / p[2] ** 2]])
        cov2 = jac @ rot @ cov3 @ rot.T @ jac.T + 0.3 * np.eye(2)
        if np.linalg.det(cov2) <= 0:
            continue
        conic = np.linalg.inv(cov2)
        mean2 = np.array([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])
        direction = torch.from_numpy((means[i] - campos) / np.linalg.norm(means[i] - campos))
        color = _eval_sh(splats.sh_degree, direction, sh[i]).numpy()
        opacity = 1.0 / (1.0 + np.exp(-float(splats.opacity_logits[i])))
        entries.append((p[2], mean2, conic, color, opacity))
    entries.sort(key=lambda e: e[0])
    image = np.zeros((cam.height, cam.width, 3))
    trans_px = np.ones((cam.height, cam.width))
    done = np.zeros((cam.height, cam.width), dtype=bool)
    for _, mean2, conic, color, opacity in entries:
        dx, dy = xs - mean2[0], ys - mean2[1]
        power = -0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) - conic[0, 1] * dx * dy
        alpha = np.minimum(0.99, opacity * np.exp(power))
        use = (power <= 0) & (alpha >= 1.0 / 255.0) & ~done
        stop = use & (trans_px * (1 - alpha) < 1e-4)
        done |= stop
        use &= ~stop
        image += np.where(use[..., None], (alpha * trans_px)[..., None] * color, 0.0)
        trans_px = np.where(use, trans_px * (1 - alpha), trans_px)
    image += trans_px[..., None] * np.asarray(background)
    return image, 1.0 - trans_px
