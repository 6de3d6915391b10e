"""The ``remote`` frame source: frames streamed from a ``gscache serve`` render server over ``WS /stream``.

Protocol (server/README.md, ``server/stream.py``): the client sends JSON text messages
``{"type": "config", ...view}`` (size per eye, ``K``, near/far, stereo and ``ipd``, background, format, quality) and
``{"type": "pose", "id": N, "world_to_camera": 4x4}`` (OpenCV); the server renders only the newest pose and answers
with one binary message per frame: a 48-byte little-endian header (:data:`HEADER`) then the JPEG, PNG or raw RGB
payload (stereo: both eyes side by side, left first). Errors come back as ``{"type": "error", ...}`` text; close
codes 1001 (server shutting down), 1008 (token refused), 1013 (too many streams) end the stream.

Threads: the UI thread only calls :meth:`RemoteClient.request` (stores the wanted view; never touches the network)
and :meth:`RemoteClient.latest`. A connection thread connects (with backoff after a loss), receives and decodes
frames, keeping only the newest; a sender thread per connection sends the newest wanted config and pose. So the UI
never blocks, whatever the network does.

``websockets`` and ``simplejpeg`` (the ``server`` extra) are imported when a remote source is created.
"""

from __future__ import annotations

import io
import json
import math
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import moderngl
import numpy as np

from .sources import RenderSettings, SourceFrame

if TYPE_CHECKING:
    from renderer import Camera, Splats

    from .pipeline import FrameRequest

MAGIC = b"GSCF"
VERSION = 1
# magic, version, header bytes, frame id, payload bytes, pose id, server time, render ms, encode ms,
# width (per eye), height, format code, eyes, reserved -- the same layout as server.stream.HEADER
HEADER = struct.Struct("<4sHHIIqdffHHBBH")
FORMAT_NAMES = {0: "raw", 1: "jpeg", 2: "png"}
MAX_SIDE = 4096  # the server's bound per side per eye (server.config.MAX_IMAGE_SIDE)
MAX_MESSAGE_BYTES = 2 * MAX_SIDE * MAX_SIDE * 3 + HEADER.size  # the largest frame: raw stereo at the bound
CLOSE_MEANINGS = {1000: "closed by the server", 1001: "server shutting down", 1008: "refused by the server",
                  1009: "message too large", 1011: "server internal error", 1013: "server busy (too many streams)"}
PERMANENT_CLOSE_CODES = (1008,)  # retrying cannot help (wrong token, foreign origin): wait for Reconnect


def _missing_extra(err: ImportError) -> RuntimeError:
    return RuntimeError(f"the remote source needs websockets and simplejpeg ({err.name} is missing): "
                        "pip install -e '.[server]'")


# ----- protocol -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamHeader:
    """The header before every binary frame (see ``server.stream.FrameHeader``; parsed here so that the viewer
    does not import the server package)."""

    frame_id: int
    payload_bytes: int
    pose_id: int
    server_time: float
    render_ms: float
    encode_ms: float
    width: int
    height: int
    format: str
    eyes: int

    @staticmethod
    def unpack(message: bytes) -> StreamHeader:
        """Read the header at the start of a binary frame; ``ValueError`` if it is not a v1 gscache frame."""
        if len(message) < HEADER.size:
            raise ValueError(f"frame: expected at least {HEADER.size} bytes, got {len(message)}")
        (magic, version, size, frame_id, payload, pose_id, server_time, render_ms, encode_ms, width, height,
         fmt, eyes, _) = HEADER.unpack_from(message)
        if magic != MAGIC or version != VERSION or size != HEADER.size:
            raise ValueError(f"frame: not a gscache v{VERSION} frame (magic {magic!r}, version {version})")
        if fmt not in FORMAT_NAMES or eyes not in (1, 2):
            raise ValueError(f"frame: unknown format code {fmt} or eye count {eyes}")
        return StreamHeader(frame_id, payload, pose_id, server_time, render_ms, encode_ms, width, height,
                            FORMAT_NAMES[fmt], eyes)


def decode_payload(header: StreamHeader, payload: bytes) -> np.ndarray:
    """The frame's pixels ``[height, eyes * width, 3]`` uint8; ``ValueError`` for a payload that does not fit."""
    shape = (header.height, header.eyes * header.width, 3)
    if len(payload) != header.payload_bytes:
        raise ValueError(f"frame: header says {header.payload_bytes} payload bytes, got {len(payload)}")
    if header.format == "raw":
        if len(payload) != math.prod(shape):
            raise ValueError(f"raw frame: expected {math.prod(shape)} bytes for {shape}, got {len(payload)}")
        pixels = np.frombuffer(payload, dtype=np.uint8).reshape(shape)
    elif header.format == "jpeg":
        import simplejpeg

        pixels = simplejpeg.decode_jpeg(payload, colorspace="RGB")
    else:
        from PIL import Image

        pixels = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
    if pixels.shape != shape:
        raise ValueError(f"{header.format} frame: header says {shape}, image is {pixels.shape}")
    return pixels


def eye_rgba(pixels: np.ndarray, eyes: int) -> list[np.ndarray]:
    """Split a side-by-side frame into per-eye float32 RGBA eye-buffer images (alpha 1; the server composited
    the background)."""
    width = pixels.shape[1] // eyes
    out = []
    for i in range(eyes):
        rgba = np.empty((pixels.shape[0], width, 4), dtype=np.float32)
        np.multiply(pixels[:, i * width:(i + 1) * width], np.float32(1 / 255), out=rgba[..., :3])
        rgba[..., 3] = 1.0
        out.append(rgba)
    return out


@dataclass(frozen=True)
class RemoteSpec:
    """Where the render server is and how to stream from it.

    Attributes:
        url: ``ws://host:port`` (``/stream`` is added when no path is given) or ``wss://...``.
        token: the server's token, sent as ``Authorization: Bearer`` (never in the URL).
        format: ``jpeg``, ``png`` or ``raw``; quality: JPEG quality 1..100.
        backoff_s: first and largest wait between reconnection attempts (doubling in between).
        open_timeout_s: how long one connection attempt may take.
    """

    url: str
    token: str | None = None
    format: str = "jpeg"
    quality: int = 90
    backoff_s: tuple[float, float] = (0.5, 10.0)
    open_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"remote: expected ws://host:port or wss://host:port, got {self.url!r}")
        if self.format not in ("jpeg", "png", "raw"):
            raise ValueError(f"remote format: expected jpeg, png or raw, got {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"remote quality: expected 1..100, got {self.quality}")
        if not 0 < self.backoff_s[0] <= self.backoff_s[1]:
            raise ValueError(f"backoff_s: expected 0 < first <= largest, got {self.backoff_s}")

    @property
    def stream_url(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        path = parts.path if parts.path not in ("", "/") else "/stream"
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    @property
    def http_url(self) -> str:
        """``http(s)://host:port`` of the same server (for ``GET /scenes``)."""
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, "", "", ""))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


# ----- the connection ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFrame:
    """The newest decoded frame: per-eye float RGBA images and what the server said about it."""

    seq: int  # client-side counter of decoded frames (all connections)
    header: StreamHeader
    eyes: list[np.ndarray]  # [h, w, 4] float32 each
    latency_ms: float | None  # from sending its pose to decoding it (client clock)


@dataclass(frozen=True)
class RemoteStatus:
    """The connection's state, for the UI.

    ``state``: ``connecting``, ``connected``, ``reconnecting`` (lost; ``detail`` says why, ``retry_at`` when the
    next attempt starts, monotonic clock), ``refused`` (the server turned us away for good: wrong token; waits for
    :meth:`RemoteClient.reconnect`) or ``closed``.
    """

    state: str
    detail: str = ""
    retry_at: float | None = None
    attempt: int = 0

    def text(self, now: float | None = None) -> str:
        if self.state == "reconnecting":
            left = max(0.0, (self.retry_at or 0.0) - (time.monotonic() if now is None else now))
            return f"lost: {self.detail}; reconnecting in {left:.1f} s"
        if self.state == "connecting" and self.attempt > 0:
            return f"connecting (attempt {self.attempt + 1}) ... last loss: {self.detail}"
        if self.state == "refused":
            return f"refused: {self.detail}"
        return f"{self.state}: {self.detail}" if self.detail else self.state

    @property
    def level(self) -> str:
        """``ok``, ``busy`` or ``bad`` (the UI's colour)."""
        return {"connected": "ok", "connecting": "busy", "reconnecting": "bad", "refused": "bad"}.get(self.state,
                                                                                                   "busy")


@dataclass
class _Wanted:
    pose_id: int = 0  # 0: nothing wanted yet; ids start at 1
    view: dict = field(default_factory=dict)
    world_to_camera: list = field(default_factory=list)


class RemoteClient:
    """A background connection to a render server's ``/stream`` (see the module docstring)."""

    def __init__(self, spec: RemoteSpec, start: bool = True) -> None:
        try:
            import simplejpeg  # noqa: F401 - checked now so that the error names the missing extra
            from websockets.sync.client import connect  # noqa: F401
        except ImportError as err:
            raise _missing_extra(err) from None
        self.spec = spec
        self._lock = threading.Condition()
        self._wanted = _Wanted()
        self._sent_at: dict[int, float] = {}
        self._latest: RemoteFrame | None = None
        self._seq = 0
        self._status = RemoteStatus("connecting", spec.stream_url)
        self._stop = threading.Event()
        self._wake = threading.Event()  # skip the backoff wait (reconnect / close)
        self._ws = None
        self.scene_info: dict | None = None  # GET /scenes "loaded" of the last connection
        self.connection_seq = 0  # connections made so far
        self.gated = False  # send poses only once the UI acknowledged the connection (see acknowledge)
        self._acknowledged = 0
        self.server_error: str | None = None  # the last error message the server sent (the stream goes on)
        self.frames_received = 0
        self.frames_dropped = 0  # decoded never: a newer frame was already waiting
        self._thread = threading.Thread(target=self._run, name="gscache-remote", daemon=True)
        if start:
            self._thread.start()

    # ----- UI thread ----------------------------------------------------------------------------------------
    def request(self, view: dict, world_to_camera: list) -> int:
        """Ask for a frame of ``view`` (config fields) at ``world_to_camera``; returns the wanted pose id (a new one
        only when something changed). Never blocks on the network."""
        with self._lock:
            wanted = self._wanted
            if wanted.pose_id and wanted.view == view and wanted.world_to_camera == world_to_camera:
                return wanted.pose_id
            self._wanted = _Wanted(wanted.pose_id + 1, dict(view), world_to_camera)
            self._lock.notify_all()
            return self._wanted.pose_id

    def connection(self) -> tuple[int, dict | None]:
        """``(connection_seq, scene_info)`` of the newest connection, read together."""
        with self._lock:
            return self.connection_seq, self.scene_info

    def acknowledge(self, seq: int) -> None:
        """The UI has seen connection ``seq`` (and framed its scene): with :attr:`gated`, poses flow from now on,
        so that the first pose sent is already framed on the server's scene."""
        with self._lock:
            self._acknowledged = max(self._acknowledged, seq)
            self._lock.notify_all()

    def latest(self) -> RemoteFrame | None:
        with self._lock:
            return self._latest

    @property
    def status(self) -> RemoteStatus:
        with self._lock:
            return self._status

    @property
    def wanted_pose_id(self) -> int:
        with self._lock:
            return self._wanted.pose_id

    @property
    def waiting(self) -> bool:
        """A frame for the newest wanted pose is still to come (and the connection is up or coming up)."""
        with self._lock:
            shown = self._latest.header.pose_id if self._latest is not None else 0
            return self._wanted.pose_id > shown and self._status.state in ("connecting", "connected")

    def reconnect(self) -> None:
        """Drop the connection (if any) and connect again now, skipping the backoff (also after ``refused``)."""
        with self._lock:
            self._status = RemoteStatus("connecting", "reconnecting now")
        self._wake.set()  # the receive loop sees it within 0.5 s and closes (closing here could block the UI)

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop the threads and close the connection (normal closure)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._lock.notify_all()
        ws = self._ws
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways; it is closed
                pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        with self._lock:
            self._status = RemoteStatus("closed")

    # ----- connection thread --------------------------------------------------------------------------------
    def _set_status(self, status: RemoteStatus) -> None:
        with self._lock:
            if self._status.state != "closed":
                self._status = status

    def _run(self) -> None:
        first, largest = self.spec.backoff_s
        attempt = 0
        while not self._stop.is_set():
            last = self._status
            self._set_status(RemoteStatus("connecting", last.detail if attempt else self.spec.stream_url, None,
                                          attempt))
            self._wake.clear()
            reason, permanent, connected = self._connect_once()
            if self._stop.is_set():
                break
            if permanent:
                self._set_status(RemoteStatus("refused", reason))
                self._wake.wait()
                attempt = 0
                continue
            attempt = 1 if connected else attempt + 1  # a connection that worked restarts the backoff
            delay = min(largest, first * 2 ** (attempt - 1))
            self._set_status(RemoteStatus("reconnecting", reason, time.monotonic() + delay, attempt))
            self._wake.wait(delay)

    def _connect_once(self) -> tuple[str, bool, bool]:
        """One connection: returns (why it ended, whether retrying is pointless, whether it got connected)."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        reason, permanent = self._fetch_scene_info()
        if reason:
            return reason, permanent, False
        try:
            ws = connect(self.spec.stream_url, additional_headers=self.spec.headers, compression=None,
                         open_timeout=self.spec.open_timeout_s, close_timeout=1.0, max_size=MAX_MESSAGE_BYTES,
                         **_no_proxy_kwargs())
        except InvalidStatus as err:
            code = err.response.status_code
            return f"the server answered HTTP {code} to the WebSocket handshake", code in (401, 403), False
        except InvalidURI as err:
            return f"bad URL: {err}", True, False
        except (OSError, TimeoutError, InvalidHandshake) as err:
            return _describe(err), False, False
        with ws:  # closes it on the way out (and is how websockets >= 17.1 wants a connection used)
            self._ws = ws
            if self._stop.is_set():
                return "closed", False, True
            with self._lock:
                self.connection_seq += 1
                seq = self.connection_seq
            self._set_status(RemoteStatus("connected", self._connected_detail()))
            self.server_error = None
            ended = threading.Event()
            sender = threading.Thread(target=self._send_loop, args=(ws, ended, seq), name="gscache-remote-send",
                                      daemon=True)
            sender.start()
            try:
                reason, permanent = self._receive_loop(ws, ConnectionClosed)
            finally:
                ended.set()
                with self._lock:
                    self._lock.notify_all()
                ws.close()
                sender.join(2.0)
                self._ws = None
        return reason, permanent, True

    def _connected_detail(self) -> str:
        info = self.scene_info
        scene = f", scene {info['name']} ({info['gaussians']:,} Gaussians)" if info else ", no scene loaded"
        return self.spec.stream_url + scene

    def _fetch_scene_info(self) -> tuple[str, bool]:
        """``GET /scenes`` for the loaded scene's centre and extent (the camera's framing); checks the token too.
        Returns ("", False) when the server answered (or the route is missing), else why it failed."""
        request = urllib.request.Request(self.spec.http_url + "/scenes", headers=self.spec.headers)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.spec.open_timeout_s) as response:
                body = json.loads(response.read(1 << 20))
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                return f"{_error_detail(err)} (HTTP {err.code}); check --token", True
            return "", False  # the stream may still work; the camera keeps its framing
        except (OSError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            return _describe(reason if isinstance(reason, BaseException) else err), False
        except ValueError:
            return "", False
        loaded = body.get("loaded") if isinstance(body, dict) else None
        with self._lock:
            self.scene_info = loaded if isinstance(loaded, dict) and "center" in loaded else None
        return "", False

    def _send_loop(self, ws, ended: threading.Event, seq: int) -> None:
        """Send the newest wanted config and pose whenever they change (per connection)."""
        sent_view: dict | None = None
        sent_id = 0

        def idle() -> bool:
            held = self.gated and self._acknowledged < seq
            return held or self._wanted.pose_id in (0, sent_id)

        while True:
            with self._lock:
                while not ended.is_set() and not self._stop.is_set() and idle():
                    self._lock.wait(0.5)
                if ended.is_set() or self._stop.is_set():
                    return
                wanted = self._wanted
            try:
                if wanted.view != sent_view:
                    ws.send(json.dumps({"type": "config", **wanted.view}))
                    sent_view = wanted.view
                ws.send(json.dumps({"type": "pose", "id": wanted.pose_id, "world_to_camera": wanted.world_to_camera}))
            except Exception:  # noqa: BLE001 - the receive loop reports why the connection ended
                return
            sent_id = wanted.pose_id
            with self._lock:
                self._sent_at[sent_id] = time.perf_counter()
                if len(self._sent_at) > 256:
                    for old in sorted(self._sent_at)[:128]:
                        del self._sent_at[old]

    def _receive_loop(self, ws, closed_error: type[Exception]) -> tuple[str, bool]:
        while not self._stop.is_set() and not self._wake.is_set():
            try:
                message = ws.recv(timeout=0.5)
                newest = None if isinstance(message, str) else message
                if isinstance(message, str):
                    self._on_text(message)
                while True:  # drain what is already here: only the newest frame gets decoded
                    try:
                        more = ws.recv(timeout=0)
                    except TimeoutError:
                        break
                    if isinstance(more, str):
                        self._on_text(more)
                    else:
                        self.frames_dropped += newest is not None
                        newest = more
            except TimeoutError:
                continue
            except closed_error as err:
                if self._wake.is_set() or self._stop.is_set():
                    return "reconnect requested", False
                return _close_reason(err)
            if newest is not None:
                self._on_frame(newest)
        return ("closed", False) if self._stop.is_set() else ("reconnect requested", False)

    def _on_text(self, text: str) -> None:
        try:
            body = json.loads(text)
        except ValueError:
            self.server_error = f"unreadable message from the server: {text[:200]}"
            return
        detail = str(body.get("detail", body)) if isinstance(body, dict) else str(body)
        problems = body.get("problems") if isinstance(body, dict) else None
        if problems:
            detail += " (" + "; ".join(map(str, problems[:3])) + ")"
        self.server_error = f"server: {detail}"

    def _on_frame(self, message: bytes) -> None:
        try:
            header = StreamHeader.unpack(message)
            pixels = decode_payload(header, message[HEADER.size:])
        except (ValueError, OSError) as err:
            self.server_error = f"bad frame: {err}"
            return
        eyes = eye_rgba(pixels, header.eyes)
        now = time.perf_counter()
        with self._lock:
            sent = self._sent_at.get(header.pose_id)
            self._seq += 1
            self.frames_received += 1
            self._latest = RemoteFrame(self._seq, header, eyes, None if sent is None else (now - sent) * 1e3)
        self.server_error = None  # a frame came through: the last complaint is history


def _no_proxy_kwargs() -> dict:
    """``proxy=None`` where the websockets client has proxy support (>= 15; it reads $HTTPS_PROXY otherwise)."""
    import inspect

    from websockets.sync.client import connect

    return {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}


def _describe(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is `gscache serve` running there?)"
    if isinstance(err, TimeoutError):
        return "timed out"
    text = str(err) or type(err).__name__
    return text


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read(1 << 16))
        return f"{body.get('error', 'error')}: {body.get('detail', '')}".strip()
    except (ValueError, OSError, AttributeError):
        return str(err.reason)


def _close_reason(err) -> tuple[str, bool]:
    """Why a stream ended (from a ``ConnectionClosed``) and whether retrying is pointless."""
    rcvd = getattr(err, "rcvd", None)
    if rcvd is None:
        return "the connection dropped (no close frame)", False
    meaning = CLOSE_MEANINGS.get(rcvd.code, "closed")
    reason = f"{meaning}: {rcvd.reason}" if rcvd.reason and rcvd.reason not in meaning else meaning
    if rcvd.code in PERMANENT_CLOSE_CODES:
        reason += "; check --token"
    return f"{reason} (close {rcvd.code})", rcvd.code in PERMANENT_CLOSE_CODES


# ----- the frame source ---------------------------------------------------------------------------------------
class RemoteSource:
    """Frames from a render server as a viewer frame source (the pipeline calls :meth:`begin_frame` with the whole
    request, then :meth:`render` once per eye: left, then right).

    The server gets the head camera of the request (scaled) and, for stereo, ``stereo`` and ``ipd``, so it renders
    the same eye cameras as the local sources would. Colour only: depth and alpha modes show the colour image.
    """

    name = "remote"

    def __init__(self, spec: RemoteSpec) -> None:
        self.spec = spec
        self.client = RemoteClient(spec)
        self.refusal: str | None = None  # why the current request was not sent (too large)
        self.framed_seq = 0  # the connection whose scene the UI has framed (see RemoteClient.acknowledge)
        self._wanted_id = 0  # the pose id of the current request
        self._frame: RemoteFrame | None = None
        self._eye = 0
        self._uploaded: dict[int, tuple] = {}
        self._shown_seq = 0

    def set_scene(self, splats: Splats) -> None:
        """Nothing to upload: the server shows its own loaded scene."""

    def begin_frame(self, request: FrameRequest, cameras: list[Camera]) -> None:
        self._eye = 0
        head = request.head_camera()
        if head.width > MAX_SIDE or head.height > MAX_SIDE:
            self.refusal = (f"{head.width}x{head.height} per eye is over the server's limit of {MAX_SIDE} pixels "
                            "per side: lower the resolution scale or the window size")
        else:
            self.refusal = None
            view = {"width": head.width, "height": head.height, "K": head.K.tolist(), "near": head.near,
                    "far": head.far, "stereo": request.stereo != "mono",
                    "background": [float(c) for c in request.settings.background], "format": self.spec.format,
                    "quality": self.spec.quality}
            if request.stereo != "mono":
                view["ipd"] = float(request.ipd)
            self._wanted_id = self.client.request(view, head.world_to_camera.tolist())
            self.client.acknowledge(self.framed_seq)
        self._frame = self.client.latest()

    def render(self, camera: Camera, settings: RenderSettings, fbo: moderngl.Framebuffer) -> SourceFrame:
        start = time.perf_counter()
        eye, self._eye = self._eye, self._eye + 1
        frame = self._frame
        tex = fbo.color_attachments[0]
        if frame is None:
            fbo.clear(*settings.background, 1.0)
        else:
            key = (frame.seq, tex.glo, tex.size)
            if self._uploaded.get(eye) != key:
                image = frame.eyes[min(eye, len(frame.eyes) - 1)]
                if (image.shape[1], image.shape[0]) != tex.size:  # a frame of the size before a resize
                    image = _resize(image, tex.size)
                tex.write(np.ascontiguousarray(image).tobytes())
                self._uploaded[eye] = key
            self._shown_seq = frame.seq
        # pending: the frame drawn now (not whatever arrived since) is older than the pose asked for
        stale = frame is None or frame.header.pose_id < self._wanted_id
        pending = self.refusal is None and stale and self.client.status.state in ("connecting", "connected")
        return SourceFrame((time.perf_counter() - start) * 1e3, pending=pending)

    @property
    def has_new_frame(self) -> bool:
        """A frame arrived that has not been drawn yet."""
        frame = self.client.latest()
        return frame is not None and frame.seq != self._shown_seq

    @property
    def up_to_date(self) -> bool:
        """The frame on show answers the newest wanted pose."""
        frame = self.client.latest()
        wanted = self.client.wanted_pose_id
        return frame is not None and wanted > 0 and frame.header.pose_id == wanted and frame.seq == self._shown_seq

    def status_line(self) -> tuple[str, str]:
        """(level, text) for the UI: ``ok``/``busy``/``bad`` and the connection state with the newest problem."""
        status = self.client.status
        if self.refusal is not None:
            return "bad", self.refusal
        text = status.text()
        if self.client.server_error and status.state == "connected":
            return "bad", f"{text}\n{self.client.server_error}"
        return status.level, text

    def info_lines(self) -> list[str]:
        frame = self.client.latest()
        if frame is None:
            return []
        h = frame.header
        lines = [f"frame {h.frame_id} (pose {h.pose_id}): {h.width}x{h.height}{' x2 eyes' if h.eyes == 2 else ''} "
                 f"{h.format}, {h.payload_bytes / 1024:.0f} KiB",
                 f"server render {h.render_ms:.1f} ms + encode {h.encode_ms:.1f} ms"]
        if frame.latency_ms is not None:
            lines.append(f"pose -> frame {frame.latency_ms:.0f} ms; {self.client.frames_received} frames, "
                         f"{self.client.frames_dropped} stale dropped")
        return lines

    def release(self) -> None:
        self.client.close()
        self._frame = None


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[h, w, 4]`` to ``size`` = (width, height) (only while a resize settles)."""
    width, height = size
    rows = np.minimum((np.arange(height) + 0.5) * image.shape[0] / height, image.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(width) + 0.5) * image.shape[1] / width, image.shape[1] - 1).astype(np.intp)
    return image[rows][:, cols]
