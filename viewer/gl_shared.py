"""Frames that GL reads in place from CUDA memory: the viewer's CUDA display path without per-frame interop calls.

``cudaGraphicsMapResources``/``Unmap`` around every frame (``viewer.interop.GLImage``) cost ~0.35 ms on the GPU
timeline of an H200 even with no GL work between them, more than the display kernel itself
(``benchmarks/viewer_overhead.py``). Here the memory is shared once instead: a CUDA virtual-memory allocation is
exported as a file descriptor (``cuda/csrc/shared_memory.cpp``) and imported by GL (``GL_EXT_memory_object_fd``) as
the storage of a GL buffer. The display kernel writes RGBA8 frames into it; a fragment shader reads them through a
buffer texture (bilinear, or 1:1) straight into the window. Measured on an H200 the exchange now costs ~0.1 ms per
frame instead of ~0.65; what remains of the viewer's overhead is the GPU switching between the GL and the CUDA
context for any GL work at all (``benchmarks/results/*-viewer-overhead.json``).

Neither API knows what the other does, so the order is kept by hand:

- GL draws a slot only after the CUDA event recorded behind its write has completed (a host-side check);
- CUDA writes a slot again only after the GL fence placed behind its last draw has signalled.

Each frame goes to the oldest slot that GL has finished reading (checked without waiting; the newest frame's slot
is kept for the window), so the writer waits for GL only when every other slot is still being read; every draw is
flushed at once, so that GL's work reaches the GPU without waiting for the writer. A draw that need not be the
newest (:meth:`SharedDisplay.draw` with ``newest=False``, what the window does every UI frame) shows the newest
*finished* frame without waiting and reports :attr:`SharedDisplay.pending` while a newer one is still rendering, so
the window keeps one frame in flight instead of stalling the GPU between CUDA and GL (the next UI frame shows the
newer one).

Needs the two GL extensions and the GL context on the CUDA GPU (the frames are read through a buffer texture, core
since OpenGL 3.1); where either is missing :func:`shared_display_unavailable` says why and the viewer keeps CUDA-GL
interop. Set ``GSCACHE_VIEWER_SHARED=0`` to turn it off (A/B measurements). :class:`FrameSlots` (the GL half) works
on any GL buffer, which is how CPU tests check its drawing without CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass

import moderngl
import torch

from renderer.switches import turned_off

from ._glsl import FULLSCREEN_VERTEX
from .interop import LAYOUT_IDS, MODE_IDS, display_size, interop_unavailable

SHARED_ENV = "GSCACHE_VIEWER_SHARED"
REQUIRED_EXTENSIONS = ("GL_EXT_memory_object", "GL_EXT_memory_object_fd")
_GL_HANDLE_TYPE_OPAQUE_FD = 0x9586
_GL_SYNC_GPU_COMMANDS_COMPLETE = 0x9117
_GL_SYNC_FLUSH_COMMANDS_BIT = 0x1
_GL_ALREADY_SIGNALED, _GL_CONDITION_SATISFIED = 0x911A, 0x911C
_FENCE_TIMEOUT_NS = 5_000_000_000
_GL_TEXTURE_BUFFER, _GL_RGBA8, _GL_TEXTURE0 = 0x8C2A, 0x8058, 0x84C0
_GL_ACTIVE_TEXTURE, _GL_MAX_TEXTURE_BUFFER_SIZE = 0x84E0, 0x8C2B
_SLOT_ALIGN = 256  # bytes between slots (texel offsets stay whole)


def slot_bytes(width: int, height: int) -> int:
    """Bytes of one slot of ``width`` x ``height`` RGBA8 pixels, rounded up to the slot alignment."""
    return -(-width * height * 4 // _SLOT_ALIGN) * _SLOT_ALIGN

# Reads the RGBA8 frame of a slot (row 0 = the image's top row, as the display kernel writes it) through a buffer
# texture. u_linear 1: bilinear with clamp to edge (what a GL_LINEAR texture gives the window); 0: the texel under the
# pixel (1:1 copies into the output texture).
SLOT_FRAGMENT = """
#version 330 core
in vec2 v_uv;
out vec4 f_color;
uniform samplerBuffer u_pixels;
uniform int u_offset;   // first texel of the slot
uniform ivec2 u_size;
uniform int u_linear;
vec3 texel(ivec2 p) {
    p = clamp(p, ivec2(0), u_size - 1);
    return texelFetch(u_pixels, u_offset + p.y * u_size.x + p.x).rgb;
}
void main() {
    vec2 p = v_uv * vec2(u_size);
    if (u_linear == 0) {
        f_color = vec4(texel(ivec2(floor(p))), 1.0);
        return;
    }
    p -= 0.5;
    ivec2 i = ivec2(floor(p));
    vec2 f = p - vec2(i);
    vec3 top = mix(texel(i), texel(i + ivec2(1, 0)), f.x);
    vec3 bottom = mix(texel(i + ivec2(0, 1)), texel(i + ivec2(1, 1)), f.x);
    f_color = vec4(mix(top, bottom, f.y), 1.0);
}
"""


def _proc_address():
    """``getProcAddress`` of the current context's window system: EGL where an EGL context is current, else GLX."""
    try:
        egl = ctypes.CDLL("libEGL.so.1")
        egl.eglGetCurrentContext.restype = ctypes.c_void_p
        if egl.eglGetCurrentContext():
            egl.eglGetProcAddress.restype = ctypes.c_void_p
            egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
            return egl.eglGetProcAddress
    except (OSError, AttributeError):
        pass
    try:
        glx = ctypes.CDLL("libGL.so.1")
        glx.glXGetProcAddressARB.restype = ctypes.c_void_p
        glx.glXGetProcAddressARB.argtypes = [ctypes.c_char_p]
        return glx.glXGetProcAddressARB
    except (OSError, AttributeError) as err:
        raise RuntimeError(f"shared display: no EGL or GLX to load GL functions from ({err})") from err


class _GL:
    """The GL entry points moderngl does not expose, loaded for the current context (``memory``: also those of
    GL_EXT_memory_object)."""

    _CORE = {
        "glGenTextures": (None, [ctypes.c_int, ctypes.POINTER(ctypes.c_uint)]),
        "glDeleteTextures": (None, [ctypes.c_int, ctypes.POINTER(ctypes.c_uint)]),
        "glBindTexture": (None, [ctypes.c_uint, ctypes.c_uint]),
        "glTexBuffer": (None, [ctypes.c_uint, ctypes.c_uint, ctypes.c_uint]),
        "glActiveTexture": (None, [ctypes.c_uint]),
        "glGetIntegerv": (None, [ctypes.c_uint, ctypes.POINTER(ctypes.c_int)]),
        "glFenceSync": (ctypes.c_void_p, [ctypes.c_uint, ctypes.c_uint]),
        "glClientWaitSync": (ctypes.c_uint, [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint64]),
        "glDeleteSync": (None, [ctypes.c_void_p]),
        "glGetError": (ctypes.c_uint, []),
        "glFlush": (None, []),
    }
    _MEMORY = {
        "glCreateMemoryObjectsEXT": (None, [ctypes.c_int, ctypes.POINTER(ctypes.c_uint)]),
        "glDeleteMemoryObjectsEXT": (None, [ctypes.c_int, ctypes.POINTER(ctypes.c_uint)]),
        "glImportMemoryFdEXT": (None, [ctypes.c_uint, ctypes.c_uint64, ctypes.c_uint, ctypes.c_int]),
        "glGenBuffers": (None, [ctypes.c_int, ctypes.POINTER(ctypes.c_uint)]),
        "glDeleteBuffers": (None, [ctypes.c_int, ctypes.POINTER(ctypes.c_uint)]),
        "glBindBuffer": (None, [ctypes.c_uint, ctypes.c_uint]),
        "glBufferStorageMemEXT": (None, [ctypes.c_uint, ctypes.c_ssize_t, ctypes.c_uint, ctypes.c_uint64]),
    }

    def __init__(self, memory: bool = False) -> None:
        get = _proc_address()
        for name, (restype, argtypes) in (self._CORE | (self._MEMORY if memory else {})).items():
            address = get(name.encode())
            if not address:
                raise RuntimeError(f"shared display: the GL context has no {name}")
            setattr(self, name, ctypes.CFUNCTYPE(restype, *argtypes)(address))

    def clear_errors(self) -> None:
        """Drop errors left by earlier calls (moderngl's or the caller's), so that :meth:`check` reports ours."""
        for _ in range(16):
            if not self.glGetError():
                return

    def check(self, what: str) -> None:
        err = self.glGetError()
        if err:
            raise RuntimeError(f"shared display: {what} failed (GL error 0x{err:04X})")

    def integer(self, name: int) -> int:
        value = ctypes.c_int(0)
        self.glGetIntegerv(name, ctypes.byref(value))
        return value.value


def shared_display_unavailable(ctx: moderngl.Context, device: torch.device) -> str | None:
    """Why frames on ``device`` cannot be shared with ``ctx`` this way (None: try; creating the first
    :class:`SharedDisplay` is the final test). ``ctx`` must be current."""
    if turned_off(SHARED_ENV):
        return f"turned off ({SHARED_ENV}=0)"
    missing = [ext for ext in REQUIRED_EXTENSIONS if ext not in ctx.extensions]
    if missing:
        return f"the GL context lacks {', '.join(missing)}"
    return interop_unavailable(device)


@dataclass
class _Slot:
    offset: int                            # bytes from the start of the buffer
    size: tuple[int, int] | None = None    # display width, height of the last write (None: never written)
    serial: int = -1                       # frame number of the last write
    fence: int | None = None               # GL sync object behind the last draw that read it
    written: torch.cuda.Event | None = None  # recorded behind the last CUDA write (SharedDisplay)


class FrameSlots:
    """The GL half: ``slots`` RGBA8 images of up to ``width`` x ``height`` pixels in GL buffer ``buffer`` (slot k at
    byte ``k * slot_bytes``, row 0 = the image's top row), drawn through a buffer texture, with a fence behind every
    draw so that the writer can wait until GL has read a slot. ``ctx`` current for every call."""

    def __init__(self, ctx: moderngl.Context, buffer: int, width: int, height: int, slots: int,
                 gl: _GL | None = None) -> None:
        if width < 1 or height < 1 or slots < 2:
            raise ValueError(f"FrameSlots: bad size {width}x{height} or slot count {slots}")
        self.ctx, self.capacity = ctx, (width, height)
        self.slot_bytes = slot_bytes(width, height)
        self.slots = [_Slot(k * self.slot_bytes) for k in range(slots)]
        self._gl = gl or _GL()
        texels = self.slot_bytes * slots // 4
        limit = self._gl.integer(_GL_MAX_TEXTURE_BUFFER_SIZE)
        if texels > limit:
            raise RuntimeError(f"shared display: {slots} frames of {width}x{height} need {texels} texels, the GL "
                               f"buffer textures hold at most {limit}")
        self._program = ctx.program(vertex_shader=FULLSCREEN_VERTEX, fragment_shader=SLOT_FRAGMENT)
        self._vao = ctx.vertex_array(self._program, [])
        name = ctypes.c_uint(0)
        self._gl.glGenTextures(1, ctypes.byref(name))
        self._texture = name
        self._gl.clear_errors()
        with self._bound():
            self._gl.glTexBuffer(_GL_TEXTURE_BUFFER, _GL_RGBA8, buffer)
        self._gl.check("glTexBuffer")

    @contextlib.contextmanager
    def _bound(self):
        """The buffer texture bound on unit 0 for the block (moderngl's active unit restored after)."""
        gl = self._gl
        active = gl.integer(_GL_ACTIVE_TEXTURE)
        gl.glActiveTexture(_GL_TEXTURE0)
        gl.glBindTexture(_GL_TEXTURE_BUFFER, self._texture.value)
        try:
            yield
        finally:
            gl.glActiveTexture(active)

    def draw(self, slot: _Slot, fbo: moderngl.Framebuffer, viewport: tuple[int, int, int, int], flip: bool,
             linear: bool) -> None:
        """Draw ``slot`` over ``viewport`` of ``fbo`` (``flip``: image row 0 at the top), then fence it."""
        fbo.use()
        fbo.viewport = viewport
        self.ctx.disable(moderngl.BLEND | moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        width, height = slot.size
        prog = self._program
        prog["u_pixels"].value = 0
        prog["u_offset"].value = slot.offset // 4
        prog["u_size"].value = (width, height)
        prog["u_linear"].value = 1 if linear else 0
        prog["u_flip"].value = 1 if flip else 0
        with self._bound():
            self._vao.render(moderngl.TRIANGLES, vertices=3)
        if slot.fence is not None:
            self._gl.glDeleteSync(slot.fence)
        slot.fence = self._gl.glFenceSync(_GL_SYNC_GPU_COMMANDS_COMPLETE, 0)
        # Submitted now, not when the writer next waits for this fence: left in GL's command buffer, the draw would
        # reach the GPU only at that wait, which then stalls the host until the GPU has switched to GL and back.
        self._gl.glFlush()

    def read_done(self, slot: _Slot) -> bool:
        """GL has finished every draw that read ``slot`` (no wait; the fence is dropped once signalled)."""
        if slot.fence is None:
            return True
        status = self._gl.glClientWaitSync(slot.fence, 0, 0)
        if status in (_GL_ALREADY_SIGNALED, _GL_CONDITION_SATISFIED):
            self._gl.glDeleteSync(slot.fence)
            slot.fence = None
            return True
        return False

    def free_slot(self, keep: _Slot | None) -> _Slot:
        """The slot to write next: the oldest one that GL has finished reading, other than ``keep`` (the newest
        frame, which the window may still show); without one, the oldest other slot after waiting for GL."""
        others = sorted((s for s in self.slots if s is not keep), key=lambda s: s.serial)
        slot = next((s for s in others if self.read_done(s)), others[0])
        self.wait_read(slot)
        return slot

    def wait_read(self, slot: _Slot) -> None:
        """Block until GL has finished every draw that read ``slot`` (before it is written again)."""
        if slot.fence is None:
            return
        status = self._gl.glClientWaitSync(slot.fence, _GL_SYNC_FLUSH_COMMANDS_BIT, _FENCE_TIMEOUT_NS)
        self._gl.glDeleteSync(slot.fence)
        slot.fence = None
        if status not in (_GL_ALREADY_SIGNALED, _GL_CONDITION_SATISFIED):
            raise RuntimeError(f"shared display: GL did not finish reading a frame (glClientWaitSync 0x{status:04X})")

    def release(self) -> None:
        """Wait for the draws, free the texture and the program (not the buffer)."""
        for slot in self.slots:
            if slot.fence is not None:
                self._gl.glClientWaitSync(slot.fence, _GL_SYNC_FLUSH_COMMANDS_BIT, _FENCE_TIMEOUT_NS)
                self._gl.glDeleteSync(slot.fence)
                slot.fence = None
        if self._texture is not None:
            self._gl.glDeleteTextures(1, ctypes.byref(self._texture))
            self._texture = None
        for res in (self._vao, self._program):
            res.release()


class SharedDisplay:
    """Display images in CUDA memory that GL reads in place: :class:`FrameSlots` over a CUDA allocation that GL
    imported, written by the display kernel (see the module doc for the order between the two APIs).

    Create and use it with ``ctx`` current; :meth:`release` before the context goes.

    Raises:
        RuntimeError: the allocation, its export or GL's import failed (the message says which and why).
    """

    def __init__(self, ctx: moderngl.Context, width: int, height: int, device: torch.device, slots: int = 3) -> None:
        from renderer.native import load_native

        if width < 1 or height < 1:
            raise ValueError(f"SharedDisplay: bad size {width}x{height}")
        self.ctx = ctx
        self.capacity = (width, height)
        self.device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        self._ops = load_native(self.device)
        self._gl = _GL(memory=True)
        self._memory = self._buffer = self._frames = None
        self._serial = 0
        self._shown = -1
        handle, fd, size, address = self._ops.shared_allocate(slot_bytes(width, height) * slots, self.device.index)
        self._handle, self._address, self._size = int(handle), int(address), int(size)
        try:
            self._import(int(fd))
            self._frames = FrameSlots(ctx, self._buffer.value, width, height, slots, self._gl)
        except Exception:
            self.release()
            raise
        for slot in self._frames.slots:
            slot.written = torch.cuda.Event()

    def _import(self, fd: int) -> None:
        gl = self._gl
        memory, buffer = ctypes.c_uint(0), ctypes.c_uint(0)
        gl.clear_errors()
        gl.glCreateMemoryObjectsEXT(1, ctypes.byref(memory))
        gl.check("glCreateMemoryObjectsEXT")
        self._memory = memory
        gl.glImportMemoryFdEXT(memory.value, self._size, _GL_HANDLE_TYPE_OPAQUE_FD, fd)
        err = gl.glGetError()
        if err:
            os.close(fd)  # GL owns the descriptor only when the import succeeds
            raise RuntimeError(f"shared display: glImportMemoryFdEXT of {self._size} bytes failed (GL error "
                               f"0x{err:04X})")
        gl.glGenBuffers(1, ctypes.byref(buffer))
        self._buffer = buffer
        gl.glBindBuffer(_GL_TEXTURE_BUFFER, buffer.value)
        gl.glBufferStorageMemEXT(_GL_TEXTURE_BUFFER, self._size, memory.value, 0)
        gl.glBindBuffer(_GL_TEXTURE_BUFFER, 0)
        gl.check("glBufferStorageMemEXT")

    # ----- CUDA side ---------------------------------------------------------------------------------------------
    def write(self, image: torch.Tensor | None, alpha: torch.Tensor | None, depth: torch.Tensor | None, mode: str,
              layout: str, depth_lo: list[float] | None = None, depth_span: list[float] | None = None) -> None:
        """Write :func:`viewer.interop.display_rgba8` of these inputs into the next slot, on the current CUDA
        stream (waits first, on the host, for GL to have finished reading that slot)."""
        if self._handle is None:
            raise RuntimeError("SharedDisplay: already released")
        ref = next(t for t in (image, alpha, depth) if t is not None)
        size = display_size(layout, int(ref.shape[2]), int(ref.shape[1]))
        if size[0] > self.capacity[0] or size[1] > self.capacity[1]:
            raise ValueError(f"SharedDisplay: a {size[0]}x{size[1]} display does not fit {self.capacity}")
        frames = self._frames
        slot = frames.free_slot(keep=self._newest())
        self._ops.display_pack_to(self._address + slot.offset, frames.slot_bytes, image, alpha, depth,
                                  MODE_IDS[mode], LAYOUT_IDS[layout], depth_lo or [0.0, 0.0],
                                  depth_span or [1.0, 1.0])
        slot.written.record(torch.cuda.current_stream(self.device))
        slot.size, slot.serial = size, self._serial
        self._serial += 1

    # ----- GL side -----------------------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int] | None:
        """Display size of the newest frame (None before the first write)."""
        newest = self._newest()
        return newest.size if newest is not None else None

    @property
    def pending(self) -> bool:
        """The last draw showed an older frame than the newest written one (draw again to show it)."""
        return self._serial > 0 and self._shown < self._serial - 1

    def draw(self, fbo: moderngl.Framebuffer, viewport: tuple[int, int, int, int], flip: bool, linear: bool = True,
             newest: bool = True) -> None:
        """Draw a frame over ``viewport`` of ``fbo`` (``flip``: image row 0 at the top of the viewport).

        ``newest``: the newest frame, waiting for its CUDA work on the host; else the newest *finished* one
        without waiting (an older one while the newest still renders: :attr:`pending` then says so)."""
        slot = self._choose(newest)
        if slot is None:
            return
        self._frames.draw(slot, fbo, viewport, flip, linear)
        self._shown = max(self._shown, slot.serial)

    def _newest(self) -> _Slot | None:
        if self._serial == 0:
            return None
        return max(self._frames.slots, key=lambda s: s.serial)

    def _choose(self, newest: bool) -> _Slot | None:
        latest = self._newest()
        if latest is None:
            return None
        if not newest and not latest.written.query():
            finished = [s for s in self._frames.slots
                        if s.serial >= 0 and s.size == latest.size and s.written.query()]
            if finished:
                return max(finished, key=lambda s: s.serial)
        latest.written.synchronize()
        return latest

    def release(self) -> None:
        """Free the GL objects and the CUDA memory (waits for both APIs to stop using it)."""
        if self._frames is not None:
            self._frames.release()
            self._frames = None
        gl = self._gl
        if self._buffer is not None:
            gl.glDeleteBuffers(1, ctypes.byref(self._buffer))
            self._buffer = None
        if self._memory is not None:
            gl.glDeleteMemoryObjectsEXT(1, ctypes.byref(self._memory))
            self._memory = None
        handle, self._handle = self._handle, None
        if handle is not None:
            self.ctx.finish()
            self._ops.shared_free(handle)
