"""On/off switches read from the environment (A/B measurements of paths that are on by default)."""

from __future__ import annotations

import os

_OFF = ("0", "off", "no", "false")


def turned_off(name: str) -> bool:
    """The environment variable ``name`` says ``0``, ``off``, ``no`` or ``false`` (any case); unset means on."""
    return os.environ.get(name, "1").strip().lower() in _OFF
