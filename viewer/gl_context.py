"""Standalone (windowless) OpenGL contexts for headless export, tests and benchmarks."""

from __future__ import annotations

import os

import moderngl

GL_REQUIRE = 330


def standalone_context(backend: str = "auto") -> moderngl.Context:
    """A moderngl context without a window: ``"egl"`` (no X server needed), ``"glx"`` (needs ``DISPLAY``, e.g.
    Xvfb) or ``"auto"`` (EGL, then GLX).

    Raises:
        OSError: no OpenGL 3.3 context could be created, with what each attempt said.
    """
    if backend not in ("auto", "egl", "glx"):
        raise ValueError(f"gl: expected 'auto', 'egl' or 'glx', got {backend!r}")
    attempts = ["egl", "glx"] if backend == "auto" else [backend]
    errors = []
    for kind in attempts:
        if kind == "glx" and not os.environ.get("DISPLAY"):
            errors.append("glx: DISPLAY is not set")
            continue
        try:
            kwargs = {"backend": "egl"} if kind == "egl" else {}
            return moderngl.create_context(standalone=True, require=GL_REQUIRE, **kwargs)
        except Exception as err:  # noqa: BLE001 - glcontext raises plain Exceptions; reported below
            errors.append(f"{kind}: {err}")
    raise OSError("cannot create an OpenGL 3.3 context (" + "; ".join(errors) + "); install Mesa "
                  "(libegl1 libgl1-mesa-dri) or run under Xvfb")
