"""``WS /stream``: the client sends poses at its own rate; the server renders only the newest and sends frames.

Client -> server (text, JSON):
- ``{"type": "config", ...ViewSpec fields}``: size, intrinsics, stereo, format for the poses that follow
  (defaults: 640 x 480, 60 degrees, mono, JPEG 90);
- ``{"type": "pose", "id": <int64>, "world_to_camera" | "c2w_opengl": 4x4}``: a head pose.
While a frame renders, newer poses replace the waiting one: stale poses are dropped, never queued. The pose a
frame shows is picked when the render thread starts on it, so a frame that waited for the render thread (other
streams' frames) still shows the newest pose. Frames are pipelined (``ServerConfig.stream_pipeline_depth``): the next
frame renders while the last one is encoded and sent; frames are sent in order, each after the one before it.

Server -> client:
- binary: one frame = a 48-byte little-endian header (:data:`HEADER`, see :class:`FrameHeader`) + the payload
  (PNG or JPEG file bytes, or raw uint8 RGB rows of ``height x eyes * width x 3``);
- text, JSON: ``{"type": "error", "detail": ..., "pose_id": ..., "status": ...}`` for a message or pose that
  could not be used (the stream stays open).
Close codes: 1000 normal, 1001 server shutting down, 1008 missing or wrong token, 1009 message too large,
1011 internal error, 1013 too many streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from .encode import FORMAT_CODES
from .errors import ApiError
from .frames import FrameRequest, RenderedFrame
from .schemas import StreamConfig, StreamMessage, StreamPose, ViewSpec, build_cameras

if TYPE_CHECKING:
    from .scenes import LoadedScene
    from .state import ServerState

log = logging.getLogger("gscache.server")

MAGIC = b"GSCF"
VERSION = 1
# magic, version, header bytes, frame id, payload bytes, pose id, server time, render ms, encode ms,
# width (per eye), height, format code, eyes, reserved
HEADER = struct.Struct("<4sHHIIqdffHHBBH")
FORMAT_NAMES = {code: name for name, code in FORMAT_CODES.items()}
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_INTERNAL, CLOSE_TRY_LATER = (
    1000, 1001, 1008, 1009, 1011, 1013)
_MESSAGES: TypeAdapter[StreamConfig | StreamPose] = TypeAdapter(StreamMessage)


@dataclass(frozen=True)
class FrameHeader:
    """The header before every binary frame on ``/stream`` (48 bytes, little-endian, no padding).

    ======  ====  =======  ===================================================================
    offset  size  type     field
    ======  ====  =======  ===================================================================
    0       4     char[4]  magic ``b"GSCF"``
    4       2     uint16   version (1)
    6       2     uint16   header size in bytes (48); the payload starts here
    8       4     uint32   frame id: frames sent on this stream before this one (0, 1, 2, ...)
    12      4     uint32   payload size in bytes
    16      8     int64    pose id: the ``id`` of the pose this frame shows
    24      8     float64  server time: Unix time (s) when the frame was sent
    32      4     float32  render ms (render thread, synchronised)
    36      4     float32  encode ms (device-to-host copy + encoding)
    40      2     uint16   width per eye (pixels)
    42      2     uint16   height (pixels)
    44      1     uint8    format: 0 raw, 1 jpeg, 2 png
    45      1     uint8    eyes: 1 mono, 2 stereo (side by side, left first; image width = eyes * width)
    46      2     uint16   reserved (0)
    ======  ====  =======  ===================================================================
    """

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

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, HEADER.size, self.frame_id & 0xFFFFFFFF, self.payload_bytes, self.pose_id,
                           self.server_time, self.render_ms, self.encode_ms, self.width, self.height,
                           FORMAT_CODES[self.format], self.eyes, 0)

    @staticmethod
    def unpack(message: bytes) -> FrameHeader:
        """Read the header at the start of a binary frame; ``ValueError`` if it is not one."""
        if len(message) < HEADER.size:
            raise ValueError(f"frame: expected at least {HEADER.size} bytes, got {len(message)}")
        (magic, version, size, frame_id, payload, pose_id, server_time, render_ms, encode_ms, width, height,
         fmt, eyes, _) = HEADER.unpack_from(message)
        if magic != MAGIC or version != VERSION or size != HEADER.size:
            raise ValueError(f"frame: not a gscache v{VERSION} frame (magic {magic!r}, version {version})")
        return FrameHeader(frame_id, payload, pose_id, server_time, render_ms, encode_ms, width, height,
                           FORMAT_NAMES.get(fmt, f"unknown-{fmt}"), eyes)


@dataclass(frozen=True)
class PendingPose:
    """A validated pose waiting for the render loop."""

    pose_id: int
    request: FrameRequest
    view: ViewSpec
    received: float


class StreamRegistry:
    """Open streams: bounded in number, and told to finish and close when the server shuts down."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.sessions: set[StreamSession] = set()
        self.closing = False

    def try_open(self, session: StreamSession) -> bool:
        if self.closing or len(self.sessions) >= self.max_streams:
            return False
        self.sessions.add(session)
        return True

    def close(self, session: StreamSession) -> None:
        self.sessions.discard(session)

    async def close_all(self, timeout_s: float) -> None:
        """Ask every stream to send its frame in flight and close (1001); wait up to ``timeout_s`` for them."""
        self.closing = True
        for session in list(self.sessions):
            session.stop(CLOSE_GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + timeout_s
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


class StreamSession:
    """One ``/stream`` connection: a receive task that keeps only the newest pose, and a render loop.

    The render loop renders a frame on the render thread, hands it to a task that encodes and sends it, and goes
    on to the next pose at once: up to ``stream_pipeline_depth`` frames of this stream are in flight (one renders,
    the others are encoded or sent). Each send waits for the frame before it, so frames leave in order.
    """

    def __init__(self, websocket: WebSocket, state: ServerState) -> None:
        self.ws, self.state = websocket, state
        self.id = uuid.uuid4().hex  # the frame cache keeps one cache per session
        self.view = ViewSpec()
        self.pending: PendingPose | None = None
        self._pending_lock = threading.Lock()  # the receive task sets it, the render thread takes it
        self.wake = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.disconnected = False
        self.frames_sent = 0
        self.depth = state.config.stream_pipeline_depth
        self._slots = asyncio.Semaphore(self.depth)
        self._last_send: asyncio.Task[None] | None = None
        self._taken: PendingPose | None = None  # the pose the render thread took for the frame it renders

    def stop(self, code: int, reason: str) -> None:
        """End the render loop after its frames in flight and close with ``code``."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.wake.set()

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive_loop())
        try:
            await self._render_loop()
        finally:
            if self._last_send is not None:  # the frames in flight are still sent (graceful shutdown)
                await asyncio.wait([self._last_send])
            receiver.cancel()
            forget = getattr(self.state.pipeline.source, "forget_session", None)
            if forget is not None:  # drop this session's frame cache
                forget(self.id)
        if not self.disconnected:
            try:
                await self.ws.close(code=self.close_code or CLOSE_NORMAL, reason=self.close_reason)
            except (RuntimeError, WebSocketDisconnect, OSError):
                pass

    # ----- receiving ------------------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await self._handle_text(message["text"])
                else:
                    await self._send_error("binary messages are not accepted; send poses as JSON text")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a failed receiver must end the stream, not leave it open and unread
            log.exception("stream: receiving failed")
            self.stop(CLOSE_INTERNAL, "internal error")
            return
        self.disconnected = True
        self.stop(CLOSE_NORMAL, "")

    async def _handle_text(self, text: str) -> None:
        metrics = self.state.metrics
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:  # also integers over Python's 4300-digit limit (a ValueError)
            metrics.stream_poses.inc(outcome="invalid")
            return await self._send_error(f"malformed JSON: {err}")
        try:
            message = _MESSAGES.validate_python(data)
        except ValidationError as err:
            metrics.stream_poses.inc(outcome="invalid")
            return await self._send_error("invalid message", problems=format_problems(err))
        if isinstance(message, StreamConfig):
            self.view = ViewSpec.model_validate(message.model_dump(exclude={"type"}))
            return None
        try:
            cameras = build_cameras(self.view, message)
        except ValueError as err:
            metrics.stream_poses.inc(outcome="invalid")
            return await self._send_error(str(err), pose_id=message.id)
        request = FrameRequest(cameras, self.view.background, self.id)
        pose = PendingPose(message.id, request, self.view, time.perf_counter())
        with self._pending_lock:
            replaced, self.pending = self.pending, pose
        if replaced is not None:
            metrics.stream_poses.inc(outcome="dropped")
        self.wake.set()
        return None

    def _take_pending(self) -> PendingPose | None:
        with self._pending_lock:
            pose, self.pending = self.pending, None
        return pose

    # ----- rendering ------------------------------------------------------------------------------------------
    async def _render_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.close_code is not None:
                return
            if self.pending is None:
                continue
            await self._slots.acquire()  # released when the frame was sent (or failed)
            if self.close_code is not None:
                self._slots.release()
                return
            if not await self._render_and_hand_over():
                return
            if self.pending is not None:  # poses arrived while this frame rendered
                self.wake.set()

    async def _render_and_hand_over(self) -> bool:
        """Render the newest pose and start encoding and sending it; False when the stream must end."""
        handed_over = False
        self._taken = None
        try:
            scene = self.state.require_scene()
            pose, rendered = await self.state.worker.call(self._render_newest, scene)
            if pose is not None and rendered is not None:
                self._last_send = asyncio.create_task(self._encode_and_send(pose, rendered, self._last_send))
                handed_over = True
        except ApiError as err:  # the render failed, or never ran (no scene, render queue full): drop its pose
            pose = self._taken or self._take_pending()
            self.state.metrics.errors.inc(kind=err.kind)
            await self._after_sends()
            await self._send_error(err.detail, pose_id=None if pose is None else pose.pose_id, status=err.status)
        except Exception:  # noqa: BLE001 - logged here; the client gets a close code, not internals
            log.exception("stream: rendering failed")
            self.stop(CLOSE_INTERNAL, "internal error")
            return False
        finally:
            if not handed_over:
                self._slots.release()
        return True

    def _render_newest(self, scene: LoadedScene) -> tuple[PendingPose | None, RenderedFrame | None]:
        """On the render thread: take the newest pose now (not when the job was queued) and render it."""
        pose = self._taken = self._take_pending()
        if pose is None:
            return None, None
        return pose, self.state.pipeline.render_now(scene, pose.request, pose.view.format)

    async def _after_sends(self) -> None:
        """Wait until every frame handed over so far was sent (or failed)."""
        if self._last_send is not None:
            await asyncio.wait([self._last_send])

    async def _encode_and_send(self, pose: PendingPose, rendered: RenderedFrame,
                               previous: asyncio.Task[None] | None) -> None:
        """Encode a rendered frame, wait for the frame before it to leave, then send it (never raises)."""
        try:
            frame = await self.state.pipeline.encode(rendered, pose.view.format, pose.view.quality)
            del rendered  # the pixels are not needed any more: free them before waiting
            if previous is not None:
                await asyncio.wait([previous])
            if self.disconnected:
                return
            self.state.metrics.observe_frame("stream", frame.render_ms, frame.encode_ms, frame.encoded.format)
            self.state.metrics.stream_poses.inc(outcome="rendered")
            header = FrameHeader(self.frames_sent, len(frame.encoded.data), pose.pose_id, time.time(),
                                 frame.render_ms, frame.encode_ms, frame.width, frame.height, frame.encoded.format,
                                 frame.eyes)
            self.frames_sent += 1
            await self.ws.send_bytes(header.pack() + frame.encoded.data)
        except ApiError as err:
            self.state.metrics.errors.inc(kind=err.kind)
            if previous is not None:
                await asyncio.wait([previous])
            await self._send_error(err.detail, pose_id=pose.pose_id, status=err.status)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.disconnected = True
            self.stop(CLOSE_NORMAL, "")
        except Exception:  # noqa: BLE001 - logged here; the client gets a close code, not internals
            log.exception("stream: frame for pose %d failed", pose.pose_id)
            self.stop(CLOSE_INTERNAL, "internal error")
        finally:
            self._slots.release()

    async def _send_error(self, detail: str, pose_id: int | None = None, status: int = 422,
                          problems: list[str] | None = None) -> None:
        body: dict[str, object] = {"type": "error", "status": status, "detail": detail}
        if pose_id is not None:
            body["pose_id"] = pose_id
        if problems:
            body["problems"] = problems
        try:
            await self.ws.send_text(json.dumps(body))
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.disconnected = True
            self.stop(CLOSE_NORMAL, "")


def format_problems(err: ValidationError) -> list[str]:
    """``["world_to_camera[0][1]: Input should be a finite number", ...]`` from a pydantic error."""
    problems = []
    for item in err.errors(include_url=False):
        where = ""
        for part in item["loc"]:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{where or 'body'}: {message}")
    return problems
