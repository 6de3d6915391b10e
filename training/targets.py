"""Ground-truth images on the training device.

On a GPU every image is decoded once, at the start, and kept on the device (float32, what the loss reads), so that a
training step does no file reading, decoding or host-to-device copy. Where they would take more than a share of the
GPU's free memory they stay in pinned host memory and are copied asynchronously per step instead. On the CPU this
is the dataset's own cache (decoded on first use).
"""

from __future__ import annotations

import torch
from torch import Tensor

from data.dataset import Frame, SceneDataset

DEVICE_SHARE = 0.25
"""Keep the images on the GPU when they take at most this share of its free memory."""


class Targets:
    """The images of ``dataset`` (train and test frames) as float32 ``[H, W, 3]`` tensors on ``device``."""

    def __init__(self, dataset: SceneDataset, device: torch.device) -> None:
        self.dataset, self.device = dataset, device
        self._store: dict[int, tuple[Frame, Tensor]] = {}  # id(frame) -> (frame, image on the device or pinned)
        self.on_device = False
        self.nbytes = 0
        if device.type != "cuda":
            return
        frames = [*dataset.train, *dataset.test]
        nbytes = sum(f.camera.width * f.camera.height * 3 * 4 for f in frames)
        free, _ = torch.cuda.mem_get_info(device)
        self.on_device = nbytes <= DEVICE_SHARE * free
        for frame in frames:
            image = dataset.image(frame)
            self._store[id(frame)] = (frame, image.to(device) if self.on_device else image.pin_memory())
        self.nbytes = nbytes

    def __call__(self, frame: Frame) -> Tensor:
        entry = self._store.get(id(frame))
        if entry is None or entry[0] is not frame:
            return self.dataset.image(frame).to(self.device)
        return entry[1] if self.on_device else entry[1].to(self.device, non_blocking=True)
