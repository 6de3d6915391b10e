"""Atomic file writes: write a temporary file next to the destination, then ``os.replace`` it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_TEMP_NAME = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Temporary files of :func:`atomic_path` under ``folder`` (left by a process killed while writing)."""
    root = Path(folder)
    return sorted(p for p in root.rglob(".*.tmp") if p.is_file() and _TEMP_NAME.match(p.name)) if root.is_dir() else []


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete :func:`stale_temp_files` (call only while no other process writes ``folder``); returns them."""
    removed = stale_temp_files(folder)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    text = json.dumps(data, indent=2, allow_nan=False, default=_jsonable) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``<run_dir>/.lock`` (flock: released when the process dies) while training, so that
    two processes never write one run directory; raises ``ValueError`` if another holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise ValueError(f"{run_dir}: another training process (pid {holder}) is using this run "
                             "directory") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
