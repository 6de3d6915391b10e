"""The desktop window: hello_imgui (GLFW + OpenGL 3) with the 3D view drawn by moderngl behind the UI.

Lifecycle (imgui_bundle's ``demo_custom_background.py`` pattern): ``post_init`` attaches moderngl to the window's
context and creates the GL pipeline; ``custom_background`` renders the 3D view when the state is dirty and draws it
behind the widgets; ``show_gui`` draws the panels; ``before_exit`` frees every GL resource. Idling is turned off
while anything animates (FIELD_NOTES 3.1: otherwise hello_imgui throttles to about 9 FPS without events).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import moderngl
from imgui_bundle import hello_imgui, imgui, immapp

from .gui import show_gui
from .pipeline import FramePipeline
from .state import AppState

_DROP_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p))


class ViewerApp:
    """The callbacks of one window over one :class:`AppState`.

    Args:
        state: the state (scene already set or loading).
        width, height: window size.
        frames: exit after this many frames (tests); None runs until the window is closed.
        screenshot: save the 3D view there before exiting (with ``frames``).
    """

    def __init__(self, state: AppState, width: int = 1280, height: int = 800, frames: int | None = None,
                 screenshot: Path | None = None) -> None:
        self.state = state
        self.width, self.height = width, height
        self.frames = frames
        self.screenshot = screenshot
        self.frame_index = 0
        self.ctx: moderngl.Context | None = None
        self._drop_callback = None  # keeps the ctypes callback alive while the window exists

    # ----- lifecycle --------------------------------------------------------------------------
    def post_init(self) -> None:
        self.ctx = moderngl.create_context()  # attaches to the window's current context
        state = self.state
        try:
            state.pipeline = FramePipeline(self.ctx, state.backend, async_sort=True, remote=state.remote)
        except (ValueError, RuntimeError) as err:  # e.g. remote without its packages: show the error, render locally
            state.error = f"backend {state.backend!r}: {err}"
            state.backend = "gl"
            state.pipeline = FramePipeline(self.ctx, "gl", async_sort=True, remote=state.remote)
        self._install_drop_callback()

    def before_exit(self) -> None:
        state = self.state
        if state.export is not None:
            state.cancel_export()
        if state.pipeline is not None:
            state.pipeline.release()
            state.pipeline = None
        self.ctx = None

    def custom_background(self) -> None:
        """Render the 3D view if dirty, then draw it over the whole window; leave GL as ImGui expects it."""
        state, ctx = self.state, self.ctx
        if ctx is None or state.pipeline is None:
            return
        width, height = self._framebuffer_size()
        state.render_if_dirty(width, height)
        screen = ctx.screen
        screen.use()
        if state.pipeline.output_size is None:  # else the draw covers the window: no clear (fill rate is scarce
            screen.clear(*state.background, 1.0)  # on compute GPUs: a full-window pass costs as much as the draw)
        state.pipeline.draw_to(screen, (0, 0, width, height))
        screen.viewport = (0, 0, width, height)  # ImGui's backend sets its own state from here

    def gui(self) -> None:
        state = self.state
        state.poll()
        state.advance(imgui.get_io().delta_time)
        state.step_export()
        state.timings.ui_ms.append(1000.0 * imgui.get_io().delta_time)
        show_gui(state)
        self._count_frame()
        pending = state.pipeline is not None and state.pipeline.display_pending  # a newer frame is on its way
        hello_imgui.get_runner_params().fps_idling.enable_idling = not (state.animating or pending)

    def _count_frame(self) -> None:
        if self.frames is None:
            return
        self.frame_index += 1
        if self.frame_index == self.frames and self.screenshot is not None:
            self.state.request_screenshot(self.screenshot)
        done = self.frame_index >= self.frames and not self.state.screenshot_pending and not self.state.loading
        if done or self.frame_index > self.frames + 600:  # never hang a test on a stuck load
            hello_imgui.get_runner_params().app_shall_exit = True

    def _framebuffer_size(self) -> tuple[int, int]:
        io = imgui.get_io()
        scale = io.display_framebuffer_scale
        return max(1, int(io.display_size.x * scale.x)), max(1, int(io.display_size.y * scale.y))

    def _install_drop_callback(self) -> None:
        """Drag and drop of files onto the window, through the GLFW library hello_imgui uses."""
        try:
            glfw = ctypes.CDLL(str(_glfw_library()))
            window = ctypes.c_void_p(hello_imgui.get_glfw_window_address())
        except (OSError, AttributeError, RuntimeError):
            return  # no drop support on this platform: the Open... button still works

        def on_drop(_window, count, paths) -> None:
            self.state.on_files_dropped([paths[i].decode("utf-8", "replace") for i in range(count)])

        self._drop_callback = _DROP_CALLBACK(on_drop)
        glfw.glfwSetDropCallback.restype = ctypes.c_void_p
        glfw.glfwSetDropCallback.argtypes = [ctypes.c_void_p, _DROP_CALLBACK]
        glfw.glfwSetDropCallback(window, self._drop_callback)

    # ----- running ----------------------------------------------------------------------------
    def runner_params(self) -> hello_imgui.RunnerParams:
        params = hello_imgui.RunnerParams()
        params.app_window_params.window_title = "gscache viewer"
        params.app_window_params.window_geometry.size = (self.width, self.height)
        params.app_window_params.restore_previous_geometry = False
        params.imgui_window_params.default_imgui_window_type = hello_imgui.DefaultImGuiWindowType.no_default_window
        params.renderer_backend_type = hello_imgui.RendererBackendType.open_gl3
        params.platform_backend_type = hello_imgui.PlatformBackendType.glfw
        params.ini_disable = True  # no imgui.ini written into the working directory
        params.fps_idling.enable_idling = False
        params.fps_idling.vsync_to_monitor = self.frames is None
        params.callbacks.post_init = self.post_init
        params.callbacks.before_exit = self.before_exit
        params.callbacks.custom_background = self.custom_background
        params.callbacks.show_gui = self.gui
        return params

    def run(self) -> None:
        """Open the window and run until it is closed (or ``frames`` have been shown)."""
        addons = immapp.AddOnsParams(with_implot=True)
        immapp.run(self.runner_params(), addons)


def _glfw_library() -> Path:
    """imgui_bundle's own libglfw (the one its window lives in)."""
    import imgui_bundle

    folder = Path(imgui_bundle.__file__).parent
    for name in ("libglfw.so.3", "libglfw.3.dylib", "glfw3.dll", "libglfw.so"):
        if (folder / name).exists():
            return folder / name
    raise OSError(f"no GLFW library next to {folder}")
