"""The token check and the confinement of scene paths to the served directory."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

from .errors import BadRequest, Forbidden, NotFound, Unauthorized

SCENE_SUFFIXES = (".ply", ".splat", ".spz", ".gschunks")


@dataclass(frozen=True)
class TokenCheck:
    """Checks the shared token of a request; every request passes when no token is set.

    HTTP requests carry it as ``Authorization: Bearer <token>``; WebSocket requests may also pass ``?token=<token>``
    (browsers cannot set headers on a WebSocket). Comparison is constant-time.
    """

    token: str | None

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def check(self, headers: list[tuple[bytes, bytes]], query_string: bytes, websocket: bool) -> None:
        """Raise :class:`Unauthorized` unless the request carries the token."""
        if not self.token:
            return
        offered = _bearer(headers)
        if offered is None and websocket:
            values = parse_qs(query_string.decode("latin-1")).get("token")
            offered = values[-1] if values else None
        if offered is None:
            where = "an Authorization: Bearer header or ?token=" if websocket else "an Authorization: Bearer header"
            raise Unauthorized(f"this server requires a token; pass it in {where}")
        if not hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), self.token.encode("utf-8")):
            raise Unauthorized("wrong token")


@dataclass(frozen=True)
class LocalOnlyCheck:
    """Without a token, a loopback server trusts whoever reaches it, and a web page in this machine's browser
    reaches it too: by cross-site requests and WebSockets, or by DNS rebinding (a site's name re-pointed at
    127.0.0.1). So, when ``enabled``: the ``Host`` header must name a loopback host, and an ``Origin`` header, when
    sent (browsers always send it on WebSockets and cross-site POSTs), must be a loopback origin.
    """

    enabled: bool

    def check(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Raise :class:`Forbidden` for a non-loopback ``Host`` or ``Origin``."""
        if not self.enabled:
            return
        from .config import is_loopback

        for name, value in headers:
            name = name.lower()
            if name not in (b"host", b"origin"):
                continue
            text = value.decode("latin-1")
            host = urlsplit(text if name == b"origin" else "//" + text).hostname or ""
            if not is_loopback(host):
                raise Forbidden(f"{name.decode().title()} {text!r} is not a loopback address; a server without a "
                                "token only answers pages and clients on this machine's loopback")


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
    return None


@dataclass(frozen=True)
class SceneDirectory:
    """The served directory: scene paths from clients are resolved inside it and nowhere else."""

    root: Path

    def __post_init__(self) -> None:
        root = Path(self.root).expanduser().resolve()
        if not root.is_dir():
            raise ValueError(f"scenes_dir: {self.root} is not a directory")
        object.__setattr__(self, "root", root)

    def resolve(self, requested: str) -> Path:
        """The file ``requested`` names, relative to the root.

        Raises:
            BadRequest: empty, NUL byte or backslash in the path.
            Forbidden: an absolute path, a ``..`` component, or a path (e.g. through a symlink) that resolves
                outside the root.
            NotFound: no such file.
        """
        if not requested or "\x00" in requested or "\\" in requested:
            raise BadRequest(f"path: expected a relative path with '/' separators, got {requested!r}")
        pure = PurePosixPath(requested)
        if pure.is_absolute() or requested.startswith("~"):
            raise Forbidden(f"path {requested!r}: absolute paths are not allowed; give a path relative to the "
                            "served directory")
        if ".." in pure.parts:
            raise Forbidden(f"path {requested!r}: '..' components are not allowed")
        candidate = self.root.joinpath(*pure.parts)
        try:
            resolved = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"path {requested!r}: no such scene in the served directory") from None
        except (OSError, RuntimeError):  # symlink loops, permissions
            raise Forbidden(f"path {requested!r}: cannot be resolved") from None
        if not resolved.is_relative_to(self.root):
            raise Forbidden(f"path {requested!r}: resolves outside the served directory (a symlink?)")
        if not resolved.is_file():
            raise NotFound(f"path {requested!r}: not a file")
        return resolved

    def scene_files(self, limit: int) -> list[tuple[str, int]]:
        """``(relative path, size in bytes)`` of up to ``limit`` scene files under the root, in walk order.

        Symlinked files are listed only when they resolve inside the root; symlinked directories are not followed.
        """
        found: list[tuple[str, int]] = []
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                if len(found) >= limit:
                    return found
                if not name.lower().endswith(SCENE_SUFFIXES):
                    continue
                path = Path(folder, name)
                try:
                    resolved = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    continue
                if resolved.is_relative_to(self.root) and resolved.is_file():
                    found.append((path.relative_to(self.root).as_posix(), resolved.stat().st_size))
        return found
