"""The one error type raised for unreadable or unwritable scene files."""

from __future__ import annotations

import os
from pathlib import Path


class SceneFormatError(ValueError):
    """A scene file is missing, malformed or holds values we cannot accept.

    The message is one line, ``"<file name>: <problem>"``, for example
    ``"guitar.ply: property 'opacity' missing from element 'vertex'"``.

    Attributes:
        path: the file concerned.
        problem: what is wrong with it (the message without the file name).
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(problem.split())  # always one line
        super().__init__(f"{self.path.name}: {self.problem}")
