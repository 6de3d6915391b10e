"""The display path of the viewer's CUDA frame sources (``viewer/interop.py``, ``cuda/csrc/gl_interop*``).

CPU (Mesa, no CUDA): the eye geometry fast path equals ``eye_cameras``; the display image (``display_rgba8``, what
the kernel computes) equals the GL compose pass in every mode and layout; a source without usable interop falls back
to the host upload and says why. GPU (``@pytest.mark.gpu``): the packing kernel equals the torch reference, a known
frame written through CUDA-GL interop into a texture of an EGL context on the CUDA GPU reads back as the expected
8-bit image; frames in CUDA memory shared with GL (``viewer/gl_shared.py``) read back exactly, round their slots,
and a draw that need not wait shows the last finished frame; the native source renders through the shared memory and
through interop (also after a resize) the same image as the host path, and its window draw matches GL_LINEAR.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

moderngl = pytest.importorskip("moderngl", reason="viewer extra not installed (pip install -e '.[viewer]')")

from data import load_scene  # noqa: E402
from renderer import Camera, Splats, StereoRig, intrinsics_from_fov, look_at, render  # noqa: E402
from viewer import gl_shared, interop  # noqa: E402
from viewer.gl_shared import SharedDisplay  # noqa: E402
from viewer.interop import GLImage, depth_ramp, display_rgba8, display_size, interop_unavailable  # noqa: E402
from viewer.pipeline import FramePipeline, FrameRequest, ViewSpec  # noqa: E402
from viewer.sources import RendererSource, RenderSettings  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "assets" / "fixtures"
LAYOUTS = ("mono", "side-by-side", "anaglyph")
MODES = ("rgb", "alpha", "depth")


def framed_camera(splats: Splats, width: int, height: int, yaw: float = 0.6, dist: float = 0.9) -> Camera:
    means = splats.means
    center = means.median(dim=0).values
    extent = float((torch.quantile(means, 0.9, dim=0) - torch.quantile(means, 0.1, dim=0)).max())
    eye = center + dist * extent * torch.tensor([math.sin(yaw), -0.3, -math.cos(yaw)])
    return Camera(look_at(eye, center, (0, -1, 0)), intrinsics_from_fov(width, height, 60.0), width, height)


@pytest.fixture(scope="module")
def guitar() -> Splats:
    return load_scene(FIXTURES / "guitar_2k.ply")


# ----- CPU --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stereo,width,scale", [("mono", 96, 1.0), ("side-by-side", 192, 1.0),
                                                ("side-by-side", 193, 0.5), ("anaglyph", 96, 0.75)])
def test_eye_geometry_equals_eye_cameras(stereo, width, scale):
    w2c = look_at((0.3, -0.8, -2.5), (0.0, 0.1, 0.0), (0, -1, 0))
    request = FrameRequest(ViewSpec(w2c, 70.0, 0.05, 50.0), width, 72, stereo=stereo, ipd=0.3, scale=scale)
    geometry, cams = request.eye_geometry(), request.eye_cameras()
    assert len(geometry) == len(cams) == (1 if stereo == "mono" else 2)
    assert (geometry.width, geometry.height, geometry.near, geometry.far) == (cams[0].width, cams[0].height,
                                                                               cams[0].near, cams[0].far)
    np.testing.assert_array_equal(geometry.viewmats, np.stack([c.world_to_camera.numpy() for c in cams]))
    np.testing.assert_array_equal(geometry.Ks, np.stack([c.K.numpy() for c in cams]))


def test_eye_geometry_refuses_what_cameras_refuse():
    w2c = look_at((0.3, -0.8, -2.5), (0.0, 0.1, 0.0), (0, -1, 0))
    scaled = w2c.clone()
    scaled[:3, :3] *= 2
    with pytest.raises(ValueError, match="rotation"):
        FrameRequest(ViewSpec(scaled), 64, 48).eye_geometry()
    with pytest.raises(ValueError, match="ipd"):
        FrameRequest(ViewSpec(w2c), 64, 48, stereo="anaglyph", ipd=-1.0).eye_geometry()
    with pytest.raises(ValueError, match="stereo"):
        FrameRequest(ViewSpec(w2c), 64, 48, stereo="top-bottom").eye_geometry()


@pytest.mark.parametrize("stereo", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_display_path_equals_the_compose_pass(ctx, guitar, stereo, mode):
    head = framed_camera(guitar, 64, 48)
    width = 128 if stereo == "side-by-side" else 64
    settings = RenderSettings(mode=mode, background=(0.1, 0.2, 0.3))
    request = FrameRequest(ViewSpec(head.world_to_camera, 60.0), width, 48, settings, stereo=stereo, ipd=0.3)
    outputs = {}
    for upload in ("eyes", "host"):
        pipeline = FramePipeline(ctx, "torch", upload=upload)
        try:
            pipeline.set_scene(guitar)
            pipeline.render(request)
            outputs[upload] = pipeline.read_output().astype(np.int32)
            assert pipeline.source.upload_path == upload
            if upload == "host":
                with pytest.raises(ValueError, match="no eye buffers"):
                    pipeline.read_eye(0)
        finally:
            pipeline.release()
    assert outputs["eyes"].shape == (48, width, 3) and outputs["eyes"].mean() > 2
    assert np.abs(outputs["eyes"] - outputs["host"]).max() <= 1


def test_display_path_scaled_odd_width_and_reuse(ctx, guitar):
    head = framed_camera(guitar, 64, 48)
    request = FrameRequest(ViewSpec(head.world_to_camera, 60.0), 129, 48, stereo="side-by-side", ipd=0.3, scale=0.5)
    outputs = {}
    for upload in ("eyes", "host"):
        pipeline = FramePipeline(ctx, "torch", upload=upload)
        try:
            pipeline.set_scene(guitar)
            pipeline.render(request)
            texture = pipeline.output_texture
            pipeline.render(request)
            assert pipeline.output_texture is texture, "the output texture is reused while the size stays"
            outputs[upload] = pipeline.read_output().astype(np.int32)
        finally:
            pipeline.release()
    diff = np.abs(outputs["eyes"] - outputs["host"])
    assert outputs["host"].shape == (48, 129, 3)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 3  # bilinear before vs after 8 bits; the seam column


def test_display_rgba8_layouts_and_rounding():
    image = torch.tensor([[[[0.0, 0.5, 1.5]]], [[[-1.0, 0.25, 0.998]]]])  # [2, 1, 1, 3]
    alpha = torch.tensor([[[[0.75]]], [[[0.25]]]])
    depth = torch.tensor([[[[2.0]]], [[[3.0]]]])
    sbs = display_rgba8(image, None, None, "rgb", "side-by-side")
    assert sbs.shape == (1, 2, 4) and sbs.dtype == torch.uint8
    assert sbs[0, 0].tolist() == [0, 128, 255, 255] and sbs[0, 1].tolist() == [0, 64, 254, 255]
    assert display_rgba8(image, None, None, "rgb", "anaglyph")[0, 0].tolist() == [0, 64, 254, 255]
    assert display_rgba8(None, alpha, None, "alpha", "mono")[0, 0].tolist() == [191, 191, 191, 255]
    lo, span = depth_ramp([(1.0, 5.0), (1.0, 5.0)])
    shown = display_rgba8(None, alpha, depth, "depth", "side-by-side", lo, span)
    assert shown[0, 0].tolist() == [191, 191, 191, 255]  # 1 - (2 - 1) / 4 = 0.75
    assert shown[0, 1].tolist() == [0, 0, 0, 255]  # alpha <= 0.5: black
    assert display_size("side-by-side", 10, 4) == (20, 4) and display_size("anaglyph", 10, 4) == (10, 4)


def test_cpu_sources_fall_back_from_interop_cleanly(ctx, guitar, monkeypatch):
    # on CPU there is nothing to interoperate with: the eye path, and a reason
    assert interop_unavailable(torch.device("cpu")) == "the frames are rendered on the CPU"
    source = RendererSource("torch", "cpu")
    assert source.display is False and source.upload_path is None
    monkeypatch.setenv(interop.INTEROP_ENV, "0")
    assert "turned off" in interop_unavailable(torch.device("cuda", 0))
    monkeypatch.delenv(interop.INTEROP_ENV)

    # what the CUDA probe decides, with the native ops faked (no GPU needed)
    class FakeOps:
        def __init__(self, answer):
            self.answer = answer

        def gl_cuda_devices(self):
            return self.answer

    cuda0 = torch.device("cuda", 0)
    for answer, expected in [((100, []), "does not run on a CUDA GPU"), ((0, [1]), "runs on CUDA device(s) [1]"),
                             ((0, []), None), ((0, [0]), None), ((999, []), None)]:
        monkeypatch.setattr(interop, "_ops", lambda device, a=answer: FakeOps(a))
        reason = interop_unavailable(cuda0)
        assert reason == expected if expected is None else expected in reason

    def unavailable(device):
        from renderer import BackendUnavailableError

        raise BackendUnavailableError("native: no compiler")

    monkeypatch.setattr(interop, "_ops", unavailable)
    assert "native extension is unavailable" in interop_unavailable(cuda0)

    # a source whose interop probe passes but whose texture registration is refused: host path, with the reason
    def refuse(texture, device):
        raise RuntimeError("cudaGraphicsGLRegisterImage(texture 7) failed: cudaErrorUnknown")

    monkeypatch.setattr("viewer.sources.interop_unavailable", lambda device: None)
    monkeypatch.setattr("viewer.sources.GLImage", refuse)
    head = framed_camera(guitar, 48, 32)
    request = FrameRequest(ViewSpec(head.world_to_camera, 60.0), 48, 32)
    pipeline = FramePipeline(ctx, "torch", upload="host")
    try:
        pipeline.source._interop = None  # as a CUDA source in ``auto`` starts
        pipeline.set_scene(guitar)
        pipeline.render(request)
        assert pipeline.source.upload_path == "host"
        assert "interop failed" in pipeline.source.upload_note and "cudaErrorUnknown" in pipeline.source.upload_note
        assert pipeline._output.attachment is None
        shown = pipeline.read_output()
        pipeline.render(request)  # decided once: no second attempt
        assert np.array_equal(pipeline.read_output(), shown)
    finally:
        pipeline.release()


# ----- GPU --------------------------------------------------------------------------------------------------------
def _known_frame(eyes: int, height: int, width: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(eyes, height, width, 3, generator=g) * 1.5 - 0.25  # out of range too: clamped
    image[0, 0, :4] = torch.tensor([[0.5 / 255, 1.5 / 255, 2.5 / 255], [0.0, 1.0, 0.5]] * 2)  # ties round to even
    alpha = torch.rand(eyes, height, width, 1, generator=g)
    alpha[:, :2, :2] = 0.5  # the depth mode's alpha > 0.5 edge
    depth = 1.0 + 4.0 * torch.rand(eyes, height, width, 1, generator=g)
    return image.to(device), alpha.to(device), depth.to(device)


def _cases():
    return [(layout, mode) for layout in LAYOUTS for mode in MODES]


@pytest.mark.gpu
def test_display_pack_kernel_equals_the_reference():
    from renderer.native import load_native

    device = torch.device("cuda", torch.cuda.current_device())
    ops = load_native(device)
    lo, span = depth_ramp([(1.3, 4.1), (0.9, 5.2)])
    for layout, mode in _cases():
        eyes = 1 if layout == "mono" else 2
        image, alpha, depth = _known_frame(eyes, 37, 53, device)
        got = ops.display_pack(image if mode == "rgb" else None, alpha if mode != "rgb" else None,
                               depth if mode == "depth" else None, interop.MODE_IDS[mode], interop.LAYOUT_IDS[layout],
                               lo, span)
        ref = display_rgba8(image, alpha, depth, mode, layout, lo, span)
        assert got.shape == ref.shape == (37, display_size(layout, 53, 37)[0], 4), (layout, mode)
        diff = (got.int() - ref.int()).abs().max().item()
        assert diff <= (1 if mode == "depth" else 0), (layout, mode, diff)


@pytest.fixture
def cuda_egl_ctx(ctx):
    """The session's standalone context (EGL first) when it runs on the NVIDIA GPU (the one CUDA renders on), else
    skip. (A second context would leave the session's one not current for the tests after these.)"""
    renderer = ctx.info.get("GL_RENDERER", "")
    if "NVIDIA" not in renderer.upper():
        pytest.skip(f"the GL context is not on the NVIDIA GPU ({renderer}); interop needs the CUDA GPU's GL")
    return ctx


@pytest.mark.gpu
def test_interop_upload_reads_back_the_expected_8bit_image(cuda_egl_ctx):
    ctx = cuda_egl_ctx
    device = torch.device("cuda", torch.cuda.current_device())
    reason = interop_unavailable(device)
    assert reason is None, f"CUDA-GL interop should be usable from {ctx.info['GL_RENDERER']}: {reason}"
    lo, span = depth_ramp([(1.3, 4.1), (0.9, 5.2)])
    for layout, mode in _cases():
        eyes = 1 if layout == "mono" else 2
        image, alpha, depth = _known_frame(eyes, 41, 67, device, seed=3)
        size = display_size(layout, 67, 41)
        texture = ctx.texture(size, 4, dtype="f1")
        texture.write(bytes(size[0] * size[1] * 4))  # zeros: a write that did not happen shows
        target = GLImage(texture, device)
        try:
            target.write(image, alpha, depth, mode, layout, lo, span)
            got = np.frombuffer(texture.read(), dtype=np.uint8).reshape(size[1], size[0], 4)  # GL waits for CUDA
            ref = display_rgba8(image, alpha, depth, mode, layout, lo, span).cpu().numpy()
            diff = int(np.abs(got.astype(np.int32) - ref.astype(np.int32)).max())
            assert diff <= (1 if mode == "depth" else 0), (layout, mode, diff)
        finally:
            target.release()
            texture.release()


@pytest.mark.gpu
def test_native_source_shows_the_native_frame_through_shared_memory_and_interop(cuda_egl_ctx, guitar, monkeypatch):
    ctx = cuda_egl_ctx
    device = torch.device("cuda", torch.cuda.current_device())
    splats = guitar.to(device)
    head = framed_camera(guitar, 160, 120)
    outputs, windows = {}, {}
    for want in ("shared", "interop", "host"):
        monkeypatch.setenv(gl_shared.SHARED_ENV, "0" if want == "interop" else "1")
        pipeline = FramePipeline(ctx, "native", upload="host" if want == "host" else "auto")
        window = ctx.framebuffer(color_attachments=[ctx.texture((211, 97), 4)])
        try:
            pipeline.set_scene(splats)
            for width, height in ((320, 120), (256, 96)):  # a resize re-creates the texture and its attachment
                request = FrameRequest(ViewSpec(head.world_to_camera, 60.0), width, height, stereo="side-by-side",
                                       ipd=0.3)
                pipeline.render(request)
                assert pipeline.source.upload_path == want, pipeline.source.upload_note
                assert pipeline.output_size == (width, height)
                pipeline.draw_to(window, (0, 0, 211, 97))  # the window: scaled, bilinear
                assert not pipeline.display_pending  # the frame was finished: the newest was shown
                windows[want, width] = np.frombuffer(window.read(components=3), np.uint8).astype(np.int32)
                outputs[want, width] = pipeline.read_output()
        finally:
            pipeline.release()
            window.release()
    for width, height in ((320, 120), (256, 96)):
        assert np.array_equal(outputs["shared", width], outputs["host", width])
        assert np.array_equal(outputs["interop", width], outputs["host", width])
        # the shared path's bilinear shader against GL_LINEAR sampling of the output texture
        assert np.abs(windows["shared", width] - windows["host", width]).max() <= 1
        rig = StereoRig(ViewSpec(head.world_to_camera, 60.0).camera(width // 2, height), 0.3)
        with torch.inference_mode():
            out = render(splats, rig, backend="native")
        ref = display_rgba8(out.image, None, None, "rgb", "side-by-side").cpu().numpy()[..., :3]
        assert ref.mean() > 2 and np.array_equal(outputs["shared", width], ref)


@pytest.mark.gpu
def test_shared_display_frames_read_back_exactly(cuda_egl_ctx):
    ctx = cuda_egl_ctx
    device = torch.device("cuda", torch.cuda.current_device())
    reason = gl_shared.shared_display_unavailable(ctx, device)
    assert reason is None, f"shared memory should be usable from {ctx.info['GL_RENDERER']}: {reason}"
    lo, span = depth_ramp([(1.3, 4.1), (0.9, 5.2)])
    display = SharedDisplay(ctx, 2 * 67, 41, device, slots=3)
    texture = ctx.texture((2 * 67, 41), 4)
    fbo = ctx.framebuffer(color_attachments=[texture])
    try:
        for k, (layout, mode) in enumerate(_cases() * 2):  # 18 different frames round 3 slots
            eyes = 1 if layout == "mono" else 2
            image, alpha, depth = _known_frame(eyes, 41, 67, device, seed=10 + k)
            display.write(image, alpha, depth, mode, layout, lo, span)
            width, height = display_size(layout, 67, 41)
            assert display.size == (width, height)
            display.draw(fbo, (0, 0, width, height), flip=False, linear=False)
            assert not display.pending
            got = np.frombuffer(fbo.read(viewport=(0, 0, width, height), components=4), np.uint8)
            ref = display_rgba8(image, alpha, depth, mode, layout, lo, span).cpu().numpy().reshape(-1)
            diff = int(np.abs(got.astype(np.int32) - ref.astype(np.int32)).max())
            assert diff <= (1 if mode == "depth" else 0), (k, layout, mode, diff)
        with pytest.raises(ValueError, match="does not fit"):
            big = torch.zeros(1, 42, 67, 3, device=device)
            display.write(big, None, None, "rgb", "mono")
    finally:
        display.release()
        fbo.release()
        texture.release()
    with pytest.raises(RuntimeError, match="released"):
        display.write(torch.zeros(1, 4, 4, 3, device=device), None, None, "rgb", "mono")


@pytest.mark.gpu
def test_shared_display_shows_the_last_finished_frame_while_the_newest_renders(cuda_egl_ctx):
    ctx = cuda_egl_ctx
    device = torch.device("cuda", torch.cuda.current_device())
    display = SharedDisplay(ctx, 32, 16, device, slots=2)
    texture = ctx.texture((32, 16), 4)
    fbo = ctx.framebuffer(color_attachments=[texture])

    def shown() -> np.ndarray:
        return np.frombuffer(fbo.read(components=3), np.uint8).reshape(16, 32, 3)

    try:
        first = torch.full((1, 16, 32, 3), 0.25, device=device)
        display.write(first, None, None, "rgb", "mono")
        display.draw(fbo, (0, 0, 32, 16), flip=False, linear=False)
        assert (shown() == 64).all()
        torch.cuda._sleep(200_000_000)  # keeps the stream busy: the next write is not finished at the draw
        display.write(torch.full((1, 16, 32, 3), 0.75, device=device), None, None, "rgb", "mono")
        display.draw(fbo, (0, 0, 32, 16), flip=False, linear=False, newest=False)
        assert display.pending and (shown() == 64).all(), "the finished frame, without waiting"
        torch.cuda.synchronize(device)
        display.draw(fbo, (0, 0, 32, 16), flip=False, linear=False, newest=False)
        assert not display.pending and (shown() == 191).all()
    finally:
        display.release()
        fbo.release()
        texture.release()


def test_frame_slots_draw_buffer_frames_exactly_and_like_a_linear_texture(ctx):
    """The GL half of the shared display (``FrameSlots``) over an ordinary GL buffer: no CUDA needed."""
    from viewer._glsl import BLIT_FRAGMENT, FULLSCREEN_VERTEX

    rng = np.random.default_rng(5)
    width, height = 37, 23
    buffer = ctx.buffer(reserve=3 * gl_shared.slot_bytes(width, height))
    slots = gl_shared.FrameSlots(ctx, buffer.glo, width, height, 3)
    exact = ctx.framebuffer(color_attachments=[ctx.texture((width, height), 4)])
    window = ctx.framebuffer(color_attachments=[ctx.texture((61, 17), 4)])
    blit = ctx.program(vertex_shader=FULLSCREEN_VERTEX, fragment_shader=BLIT_FRAGMENT)
    blit_vao = ctx.vertex_array(blit, [])
    try:
        newest = None
        for k in range(5):  # round the 3 slots, sizes changing
            w, h = (width, height) if k % 2 == 0 else (width - 6, height - 3)
            image = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
            slot = slots.free_slot(keep=newest)
            assert slot is not newest and slot.fence is None
            assert slot.serial == min(s.serial for s in slots.slots if s is not newest), "the oldest free slot"
            newest = slot
            buffer.write(image.tobytes(), offset=slot.offset)
            slot.size, slot.serial = (w, h), k
            slots.draw(slot, exact, (0, 0, w, h), flip=False, linear=False)
            assert slot.fence is not None
            got = np.frombuffer(exact.read(viewport=(0, 0, w, h), components=4), np.uint8).reshape(h, w, 4)
            assert np.array_equal(got[..., :3], image[..., :3]) and (got[..., 3] == 255).all(), k
            # scaled into a window, flipped: as the output texture drawn with GL_LINEAR
            slots.draw(slot, window, (0, 0, 61, 17), flip=True, linear=True)
            ours = np.frombuffer(window.read(components=3), np.uint8).astype(np.int32)
            texture = ctx.texture((w, h), 4, image.tobytes())
            texture.filter = (moderngl.LINEAR, moderngl.LINEAR)
            texture.repeat_x = texture.repeat_y = False
            window.use()
            texture.use(0)
            blit["u_image"].value, blit["u_flip"].value = 0, 1
            blit_vao.render(moderngl.TRIANGLES, vertices=3)
            ref = np.frombuffer(window.read(components=3), np.uint8).astype(np.int32)
            texture.release()
            assert np.abs(ours - ref).max() <= 1, k
        with pytest.raises(RuntimeError, match="hold at most"):
            gl_shared.FrameSlots(ctx, buffer.glo, 1 << 14, 1 << 14, 3)
    finally:
        slots.release()
        for res in (blit_vao, blit, exact, window, buffer):
            res.release()


def test_frame_slots_write_past_a_slot_gl_still_reads(ctx, monkeypatch):
    """The writer takes the oldest slot GL has finished reading, skips one still read, never takes the newest frame's
    slot, and waits for GL only when every other slot is still being read."""
    buffer = ctx.buffer(reserve=3 * gl_shared.slot_bytes(8, 8))
    slots = gl_shared.FrameSlots(ctx, buffer.glo, 8, 8, 3)
    window = ctx.framebuffer(color_attachments=[ctx.texture((8, 8), 4)])
    try:
        for serial, slot in enumerate(slots.slots):
            slot.size, slot.serial = (8, 8), serial
            slots.draw(slot, window, (0, 0, 8, 8), flip=False, linear=False)
        ctx.finish()
        assert all(slots.read_done(s) for s in slots.slots) and all(s.fence is None for s in slots.slots)
        oldest, middle, newest = slots.slots
        still_read = {id(oldest)}
        waited = []
        monkeypatch.setattr(slots, "read_done", lambda s: id(s) not in still_read)
        monkeypatch.setattr(slots, "wait_read", lambda s: waited.append(s))
        assert slots.free_slot(keep=newest) is middle and waited == [middle]  # its wait returns at once
        still_read.add(id(middle))
        waited.clear()
        assert slots.free_slot(keep=newest) is oldest and waited == [oldest], "all read: wait for the oldest"
    finally:
        slots.release()
        window.release()
        buffer.release()


def test_shared_display_is_refused_with_a_reason_without_cuda(ctx, monkeypatch):
    reason = gl_shared.shared_display_unavailable(ctx, torch.device("cpu"))
    assert reason is not None and ("CPU" in reason or "lacks" in reason)
    monkeypatch.setenv(gl_shared.SHARED_ENV, "0")
    assert "turned off" in gl_shared.shared_display_unavailable(ctx, torch.device("cuda", 0))
