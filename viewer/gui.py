"""The viewer's widgets: functions that take the :class:`AppState` and draw one panel each (no GL calls here)."""

from __future__ import annotations

import numpy as np
from imgui_bundle import ImVec2, ImVec4, imgui, implot, portable_file_dialogs

from .pipeline import STEREO_LAYOUTS
from .sources import REMOTE, SOURCE_NAMES
from .state import AppState

MODES = ["rgb", "depth", "alpha"]
LAYOUTS = list(STEREO_LAYOUTS)
SCENE_FILTERS = ["Scenes", "*.ply *.splat *.spz *.gschunks", "All files", "*"]
_ORBIT_RAD_PER_PX = 0.005
_PAN_PER_PX = 0.0015
_LOOK_RAD_PER_PX = 0.003


def show_gui(state: AppState) -> None:
    """The whole UI for one frame: camera input on the 3D view, then the side panel."""
    handle_camera_input(state)
    imgui.set_next_window_pos(ImVec2(8, 8), imgui.Cond_.first_use_ever)
    max_height = max(100.0, imgui.get_io().display_size.y - 16)
    imgui.set_next_window_size(ImVec2(340, max_height), imgui.Cond_.first_use_ever)
    imgui.set_next_window_size_constraints(ImVec2(260, 100), ImVec2(800, max_height))
    if imgui.begin_simple("gscache"):
        scene_panel(state)
        view_panel(state)
        render_panel(state)
        remote_panel(state)
        stereo_panel(state)
        path_panel(state)
        export_panel(state)
        stats_panel(state)
    imgui.end()


def handle_camera_input(state: AppState) -> None:
    """Mouse and keyboard on the 3D view (ignored while ImGui wants them)."""
    io = imgui.get_io()
    if not io.want_capture_mouse:
        d = io.mouse_delta
        if imgui.is_mouse_dragging(imgui.MouseButton_.left) and (d.x or d.y):
            if state.camera.mode == "orbit":
                state.orbit(-d.x * _ORBIT_RAD_PER_PX, d.y * _ORBIT_RAD_PER_PX)
            else:
                state.look(-d.x * _LOOK_RAD_PER_PX, d.y * _LOOK_RAD_PER_PX)
        pan = imgui.is_mouse_dragging(imgui.MouseButton_.right) or imgui.is_mouse_dragging(imgui.MouseButton_.middle)
        if pan and (d.x or d.y):
            state.pan(d.x * _PAN_PER_PX, d.y * _PAN_PER_PX)
        if io.mouse_wheel:
            state.dolly(io.mouse_wheel)
    if not io.want_capture_keyboard:
        def axis(plus: imgui.Key, minus: imgui.Key) -> float:
            return float(imgui.is_key_down(plus)) - float(imgui.is_key_down(minus))

        key = imgui.Key
        forward, right, up = axis(key.w, key.s), axis(key.d, key.a), axis(key.e, key.q)
        if forward or right or up:
            state.camera.mode = "fly"
            state.move(forward, right, up, io.delta_time)
        if imgui.is_key_pressed(imgui.Key.r):
            state.reset_view()
        if imgui.is_key_pressed(imgui.Key.left_bracket):
            state.snap_to_capture(state.capture_index - 1)
        if imgui.is_key_pressed(imgui.Key.right_bracket):
            state.snap_to_capture(state.capture_index + 1)


def _error_line(state: AppState) -> None:
    if state.error:
        imgui.push_text_wrap_pos(0.0)
        imgui.text_colored(ImVec4(1.0, 0.35, 0.3, 1.0), state.error)
        imgui.pop_text_wrap_pos()
        if imgui.small_button("dismiss"):
            state.error = None


def scene_panel(state: AppState) -> None:
    if not imgui.collapsing_header("Scene", imgui.TreeNodeFlags_.default_open):
        return
    slot = state.scene
    source = state.remote_source
    info = source.client.scene_info if source is not None else None
    if info is not None:
        imgui.text(f"{info.get('name', '?')}  (on the server)")
        imgui.text(f"{int(info.get('gaussians', 0)):,} Gaussians, SH degree {info.get('sh_degree', '?')}")
    name = slot.path.name if slot.path is not None else "(none)"
    if info is None or slot.path is not None:
        imgui.text(f"{name}  {slot.fmt}")
    if slot.splats is not None:
        imgui.text(f"{len(slot.splats):,} Gaussians, SH degree {slot.splats.sh_degree}")
    if imgui.button("Open...") and state.file_dialog is None:
        state.file_dialog = portable_file_dialogs.open_file("Open a scene or camera path", "",
                                                            [*SCENE_FILTERS, "Camera paths", "*.json"])
    imgui.same_line()
    if imgui.button("Reload") and slot.path is not None:
        state.open_scene(slot.path)
    if state.status:
        imgui.text_disabled(state.status)
    _error_line(state)


def view_panel(state: AppState) -> None:
    if not imgui.collapsing_header("Camera", imgui.TreeNodeFlags_.default_open):
        return
    cam = state.camera
    if imgui.radio_button("orbit", cam.mode == "orbit"):
        cam.mode = "orbit"
    imgui.same_line()
    if imgui.radio_button("fly (WASD/QE)", cam.mode == "fly"):
        cam.mode = "fly"
    changed, fov = imgui.slider_float("fov x", cam.fov_x_deg, 20.0, 120.0, "%.0f deg")
    if changed:
        cam.fov_x_deg = fov
        state.mark_dirty()
    _, cam.speed = imgui.slider_float("fly speed", cam.speed, 0.01 * state.scene.extent, 4.0 * state.scene.extent,
                                      "%.3f", imgui.SliderFlags_.logarithmic)
    if imgui.button("Reset view (R)"):
        state.reset_view()
    capture = state.scene.capture
    if capture is not None:
        imgui.text(f"capture cameras: {len(capture)}")
        if imgui.arrow_button("##prev_capture", imgui.Dir.left):
            state.snap_to_capture(state.capture_index - 1)
        imgui.same_line()
        if imgui.arrow_button("##next_capture", imgui.Dir.right):
            state.snap_to_capture(state.capture_index + 1)
        imgui.same_line()
        changed, index = imgui.slider_int("##capture", state.capture_index, 0, len(capture) - 1)
        if changed:
            state.snap_to_capture(index)
        shown = capture.cameras[state.capture_index]
        imgui.text_disabled(f"{shown.name}{f' ({shown.split})' if shown.split else ''}  [ and ] step")


def render_panel(state: AppState) -> None:
    if not imgui.collapsing_header("Render", imgui.TreeNodeFlags_.default_open):
        return
    names = [*SOURCE_NAMES, REMOTE] if state.remote is not None else list(SOURCE_NAMES)
    changed, index = imgui.combo("backend", names.index(state.backend), names)
    if changed:
        state.set_backend(names[index])
    changed, scale = imgui.slider_float("resolution", state.scale, 0.1, 1.0, "%.2f x")
    if changed:
        state.scale = scale
        state.mark_dirty()
    top = state.scene.splats.sh_degree if state.scene.splats is not None else 3
    imgui.begin_disabled(state.backend == REMOTE)  # the server renders colour at its scene's own SH degree
    changed, degree = imgui.slider_int("SH degree", min(state.sh_degree, top), 0, top)
    if changed:
        state.sh_degree = degree
        state.mark_dirty()
    changed, mode = imgui.combo("mode", MODES.index(state.mode), MODES)
    if changed:
        state.mode = MODES[mode]
        state.mark_dirty()
    imgui.end_disabled()
    changed, color = imgui.color_edit3("background", list(state.background))
    if changed:
        state.background = tuple(color)
        state.mark_dirty()
    _, state.screenshot_file = imgui.input_text("##shot", state.screenshot_file)
    imgui.same_line()
    if imgui.button("Screenshot"):
        state.request_screenshot(state.screenshot_file)


_LEVEL_COLOURS = {"ok": ImVec4(0.4, 0.9, 0.4, 1.0), "busy": ImVec4(1.0, 0.8, 0.3, 1.0),
                  "bad": ImVec4(1.0, 0.35, 0.3, 1.0)}


def remote_panel(state: AppState) -> None:
    """The render server: URL, token, connect; the connection's state and the newest frame's numbers."""
    source = state.remote_source
    flags = imgui.TreeNodeFlags_.default_open if state.remote is not None else 0
    if not imgui.collapsing_header("Remote server", flags):
        return
    _, state.remote_url = imgui.input_text("URL##remote", state.remote_url)
    _, state.remote_token = imgui.input_text("token##remote", state.remote_token, imgui.InputTextFlags_.password)
    if imgui.button("Connect"):
        state.connect_remote(state.remote_url, state.remote_token or None)
    if source is not None:
        imgui.same_line()
        if imgui.button("Reconnect now"):
            source.client.reconnect()
        level, text = state.remote_status
        imgui.push_text_wrap_pos(0.0)
        imgui.text_colored(_LEVEL_COLOURS[level], text)
        imgui.pop_text_wrap_pos()
        for line in source.info_lines():
            imgui.text_disabled(line)
    elif state.remote is not None:
        imgui.text_disabled(f"backend {state.backend}: choose 'remote' to stream from {state.remote.url}")


def stereo_panel(state: AppState) -> None:
    if not imgui.collapsing_header("Stereo"):
        return
    changed, index = imgui.combo("layout", LAYOUTS.index(state.stereo), LAYOUTS)
    if changed:
        state.stereo = LAYOUTS[index]
        state.mark_dirty()
    changed, ipd = imgui.slider_float("IPD", state.ipd, 0.0, 0.3 * state.scene.extent, "%.4f")
    if changed:
        state.ipd = ipd
        state.mark_dirty()


def path_panel(state: AppState) -> None:
    if not imgui.collapsing_header("Camera path"):
        return
    path = state.path
    if imgui.button("Record keyframe"):
        state.record_keyframe()
    imgui.same_line()
    imgui.begin_disabled(state.selected_keyframe < 0)
    if imgui.button("Delete"):
        state.delete_keyframe()
    imgui.end_disabled()
    imgui.same_line()
    if imgui.button("Stop" if state.playing else "Play"):
        state.toggle_playback()
    for i in range(len(path.keyframes)):
        clicked, _ = imgui.selectable(f"keyframe {i}  ({i * path.seconds_per_segment:.1f} s)",
                                      i == state.selected_keyframe)
        if clicked:
            state.go_to_keyframe(i)
    _, path.seconds_per_segment = imgui.slider_float("s / segment", path.seconds_per_segment, 0.2, 10.0, "%.1f")
    if path.keyframes:
        changed, t = imgui.slider_float("time", state.play_time, 0.0, max(path.duration, 1e-3), "%.2f s")
        if changed:
            state.play_time = t
            _show_time(state, t)
    _, state.path_file = imgui.input_text("file##path", state.path_file)
    if imgui.button("Save path"):
        state.save_path(state.path_file)
    imgui.same_line()
    if imgui.button("Load path"):
        state.load_path(state.path_file)


def _show_time(state: AppState, t: float) -> None:
    key = state.path.sample(t)
    state.camera.fov_x_deg = key.fov_x_deg
    state.camera.set_pose(key.world_to_camera)
    state.mark_dirty()


def export_panel(state: AppState) -> None:
    if not imgui.collapsing_header("Video export"):
        return
    _, state.export_out = imgui.input_text("mp4", state.export_out)
    changed, size = imgui.input_int2("size", list(state.export_size))
    if changed:
        state.export_size = (max(2, size[0] // 2 * 2), max(2, size[1] // 2 * 2))
    imgui.text(f"{state.path.frame_count()} frames at {state.path.fps:g} fps, layout {state.stereo}")
    if state.export is None:
        imgui.begin_disabled(not state.path.keyframes)
        if imgui.button("Export video"):
            state.start_export()
        imgui.end_disabled()
    else:
        job = state.export
        imgui.progress_bar(job.progress, ImVec2(-1, 0), f"{job.index}/{job.total}")
        if imgui.button("Cancel export"):
            state.cancel_export()


def stats_panel(state: AppState) -> None:
    if not imgui.collapsing_header("Performance", imgui.TreeNodeFlags_.default_open):
        return
    io = imgui.get_io()
    last = state.timings.last
    imgui.text(f"UI {io.framerate:.0f} FPS ({1000.0 / max(io.framerate, 1e-6):.1f} ms)")
    if last is not None:
        eyes = ", ".join(f"{e.ms:.1f}" for e in last.eyes)
        imgui.text(f"render {last.ms:.1f} ms (source {eyes} ms), {last.visible:,} drawn")
    source = state.pipeline.source if state.pipeline is not None else None
    upload = getattr(source, "upload_path", None)
    if upload is not None:
        labels = {"shared": "CUDA memory read by GL in place", "interop": "CUDA-GL interop (on the GPU)",
                  "host": "through host memory", "eyes": "float eye buffers"}
        imgui.text(f"frame upload: {labels.get(upload, upload)}")
        note = getattr(source, "upload_note", "")
        if note and upload != "shared":
            imgui.text_disabled(note)
    render_ms = np.asarray(state.timings.render_ms, dtype=np.float64)
    ui_ms = np.asarray(state.timings.ui_ms, dtype=np.float64)
    if len(ui_ms) > 1 and implot.begin_plot("frame times (ms)", ImVec2(-1, 150)):
        implot.setup_axes("frame", "ms", implot.AxisFlags_.auto_fit, implot.AxisFlags_.auto_fit)
        implot.plot_line("UI", ui_ms)
        if len(render_ms) >= 1:
            implot.plot_line("render", render_ms)
        implot.end_plot()
    tex = state.pipeline.output_texture if state.pipeline is not None else None
    if tex is not None and imgui.tree_node("output texture"):
        w = imgui.get_content_region_avail().x
        imgui.image(imgui.ImTextureRef(tex.glo), ImVec2(w, w * tex.height / max(tex.width, 1)),
                    ImVec2(0, 0), ImVec2(1, 1))
        imgui.tree_pop()
