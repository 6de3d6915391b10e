"""Camera paths and the camera controller of the viewer (no GL needed)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from renderer import look_at
from viewer.camera_control import CameraController
from viewer.camera_path import CameraPath, Keyframe


def _path() -> CameraPath:
    keys = []
    for i, (angle, height) in enumerate([(0.0, -0.5), (0.7, -0.8), (1.6, -0.4), (2.2, -1.0)]):
        eye = (3 * math.cos(angle), height, 3 * math.sin(angle))
        keys.append(Keyframe(look_at(eye, (0, 0, 0), (0, -1, 0)), 50.0 + 5 * i))
    return CameraPath(keys, seconds_per_segment=1.5, fps=20)


def test_path_passes_through_its_keyframes():
    path = _path()
    for i, key in enumerate(path.keyframes):
        sampled = path.sample(i * path.seconds_per_segment)
        assert torch.allclose(sampled.world_to_camera, key.world_to_camera, atol=1e-9)
        assert sampled.fov_x_deg == pytest.approx(key.fov_x_deg)


def test_path_positions_are_smooth_at_keyframes():
    path = _path()
    h = 1e-4
    for i in (1, 2):  # interior keyframes: velocity from the left equals velocity from the right (C1)
        t = i * path.seconds_per_segment
        left = (path.sample(t).eye - path.sample(t - h).eye) / h
        right = (path.sample(t + h).eye - path.sample(t).eye) / h
        assert torch.allclose(left, right, atol=1e-3 * float(left.norm()) + 1e-6)
    eyes = torch.stack([k.eye for k in path.frames()])
    steps = (eyes[1:] - eyes[:-1]).norm(dim=-1)
    assert float(steps.max()) < 3 * float(steps.mean()), "no jumps between frames"
    for key in path.frames():  # every sample is a rigid pose
        r = key.world_to_camera[:3, :3]
        assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-9)


def test_path_frame_count_and_json_round_trip(tmp_path):
    path = _path()
    assert path.frame_count() == round(3 * 1.5 * 20) + 1
    file = tmp_path / "path.json"
    path.save(file)
    loaded = CameraPath.load(file)
    assert loaded.fps == path.fps and loaded.seconds_per_segment == path.seconds_per_segment
    for a, b in zip(loaded.keyframes, path.keyframes):
        assert torch.equal(a.world_to_camera, b.world_to_camera) and a.fov_x_deg == b.fov_x_deg
    assert json.loads(file.read_text())["version"] == 1


@pytest.mark.parametrize("content,message", [
    ("{", "invalid JSON"),
    ('{"version": 2, "keyframes": []}', "version"),
    ('{"version": 1, "keyframes": [{"world_to_camera": [[2,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}]}', "rotation"),
    ('{"version": 1, "fps": 0, "keyframes": []}', "positive"),
])
def test_bad_path_files_name_the_problem(tmp_path, content, message):
    file = tmp_path / "bad.json"
    file.write_text(content)
    with pytest.raises(ValueError, match=message):
        CameraPath.load(file)


def test_empty_path_cannot_be_sampled():
    with pytest.raises(ValueError, match="no keyframes"):
        CameraPath().sample(0.0)


def test_controller_framing_matches_gscache_render_orbit_start():
    cam = CameraController.framing((1.0, 2.0, 3.0), 2.0)
    eye = cam.eye()
    # gscache render's first orbit frame: 1.4 x extent out along +x (the ground axis), 0.3 x that up (-y)
    assert torch.allclose(eye, torch.tensor([1.0 + 2.8, 2.0 - 0.84, 3.0], dtype=torch.float64), atol=1e-9)


def test_controller_set_pose_round_trip_and_fly_keeps_heading():
    cam = CameraController.framing((0.0, 0.0, 0.0), 1.0)
    cam.orbit(0.7, -0.2)
    pose = cam.world_to_camera()
    other = CameraController.framing((5.0, 5.0, 5.0), 1.0)
    other.set_pose(pose)
    assert torch.allclose(other.world_to_camera(), pose, atol=1e-9)
    forward = cam.forward()
    eye = cam.eye()
    cam.move(1.0, 0.0, 0.0, 0.5)
    assert torch.allclose(cam.eye(), eye + cam.speed * 0.5 * forward, atol=1e-9)
    cam.look(0.2, 0.0)
    assert torch.allclose(cam.eye(), eye + cam.speed * 0.5 * forward, atol=1e-9), "mouse look keeps the eye"
