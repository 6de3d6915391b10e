"""Where the bundled assets (scenes, fixtures) live in the source tree."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_SCENE = ASSETS_DIR / "scenes" / "snowmiku.ply"


def default_scene_path() -> Path:
    """The bundled default scene (credited in ``assets/scenes/SOURCE.md``)."""
    if not DEFAULT_SCENE.is_file():
        raise FileNotFoundError(
            f"{DEFAULT_SCENE}: bundled default scene not found; install gscache from its source tree "
            "(pip install -e .) or pass a scene path"
        )
    return DEFAULT_SCENE
