"""The render server's ASGI app (FastAPI): routes, error handlers and lifecycle.

Routes (every one needs the token when the server has one):

======================  ==================================================================================
``GET /health``         liveness and what the server runs: device, backend, scene, open streams
``GET /scenes``         scene files under the served directory, and the loaded scene
``POST /scenes/load``   ``SceneLoadRequest`` -> load a scene (path relative to the served directory)
``POST /render``        ``RenderRequest`` -> one frame as PNG, JPEG or raw RGB; timings in the headers
``WS /stream``          poses in, newest-pose frames out (see ``server.stream``)
``POST /bench``         ``BenchRequest`` -> the benchmark protocol's result JSON (bounded)
``GET /metrics``        Prometheus text format
======================  ==================================================================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

from fastapi import Depends, FastAPI, Request, Response, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from data import SceneFormatError
from renderer import BackendUnavailableError

from .bench import run_benchmark
from .bench_api import bench_config, check_bench_bounds
from .errors import ApiError, BadRequest, Conflict, InvalidRequest, NotFound, UnsupportedMediaType
from .frames import FrameRequest
from .metrics import CONTENT_TYPE
from .middleware import GuardMiddleware
from .schemas import BenchRequest, RenderRequest, SceneLoadRequest, build_cameras
from .state import ServerState
from .stream import CLOSE_TRY_LATER, StreamSession, format_problems

log = logging.getLogger("gscache.server")
M = TypeVar("M", bound=BaseModel)
VERSION = "0.1.0"


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency that parses the body as JSON into ``model``, with 400/422 errors that name the problem."""

    async def parse(request: Request) -> M:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            # also what keeps other sites' pages from posting here: they cannot send JSON without a CORS preflight
            raise UnsupportedMediaType(f"expected Content-Type: application/json, got {content_type or 'none'!r}")
        raw = await request.body()
        if not raw.strip():
            raise BadRequest(f"empty body: expected a JSON object ({model.__name__})")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as err:  # also integers over Python's 4300-digit limit (a ValueError)
            raise BadRequest(f"malformed JSON: {err}") from None
        try:
            return model.model_validate(data)
        except ValidationError as err:
            problems = format_problems(err)
            raise InvalidRequest(f"{model.__name__}: " + "; ".join(problems[:3]), problems=problems) from None

    return parse


def create_app(state: ServerState) -> FastAPI:
    """The app over a built :class:`ServerState` (see ``server.state.build_state``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(state.close)  # queued renders finish; threads stop

    app = FastAPI(title="gscache render server", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gscache = state
    app.add_middleware(GuardMiddleware, state=state)
    _add_error_handlers(app, state)
    _add_scene_routes(app, state)
    _add_render_routes(app, state)
    _add_ops_routes(app, state)
    return app


def _add_error_handlers(app: FastAPI, state: ServerState) -> None:
    def answer(err: ApiError) -> JSONResponse:
        state.metrics.errors.inc(kind=err.kind)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return answer(err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        return answer(InvalidRequest("; ".join(problems[:3]), problems=problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        detail = f"no route {request.method} {request.url.path}" if err.status_code == 404 else str(err.detail)
        body = {"error": "not found" if err.status_code == 404 else "http error", "detail": detail}
        state.metrics.errors.inc(kind=body["error"])
        return JSONResponse(body, status_code=err.status_code, headers=dict(err.headers or {}))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(err).__name__, err)
        state.metrics.errors.inc(kind="internal error")
        return JSONResponse({"error": "internal error", "detail": "the server failed to answer; see its log"},
                            status_code=500)


def _add_scene_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/scenes")
    async def scenes() -> dict[str, object]:
        limit = state.config.limits.max_scene_files
        files = await asyncio.to_thread(state.scenes.directory.scene_files, limit + 1)
        current = state.scenes.current
        return {"scenes": [{"path": p, "bytes": n} for p, n in files[:limit]], "truncated": len(files) > limit,
                "loaded": None if current is None else current.describe()}

    @app.post("/scenes/load")
    async def load(body: Annotated[SceneLoadRequest, Depends(json_body(SceneLoadRequest))]) -> dict[str, object]:
        path = state.scenes.directory.resolve(body.path)
        start = time.perf_counter()
        try:
            scene = await state.worker.call(state.scenes.load, path, body.path, body.drop_nonfinite)
        except SceneFormatError as err:
            raise InvalidRequest(f"scene {body.path!r}: {err.problem}") from None
        except ValueError as err:  # a chunk file without a GPU budget, or one too small for it
            raise InvalidRequest(f"scene {body.path!r}: {_hide_root(state, err)}") from None
        return {"loaded": scene.describe(), "load_ms": round((time.perf_counter() - start) * 1e3, 3)}


def _add_render_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/render")
    async def render(body: Annotated[RenderRequest, Depends(json_body(RenderRequest))]) -> Response:
        try:
            cameras = build_cameras(body, body)
        except ValueError as err:
            raise InvalidRequest(str(err)) from None
        scene = state.require_scene()
        frame = await state.pipeline.frame(scene, FrameRequest(cameras, body.background), body.format, body.quality)
        state.metrics.observe_frame("http", frame.render_ms, frame.encode_ms, frame.encoded.format)
        headers = {
            "X-Frame-Id": str(frame.frame_id), "X-Render-Ms": f"{frame.render_ms:.3f}",
            "X-Encode-Ms": f"{frame.encode_ms:.3f}", "X-Frame-Width": str(frame.width),
            "X-Frame-Height": str(frame.height), "X-Frame-Eyes": str(frame.eyes), "X-Frame-Format": body.format,
            "X-Scene-Version": str(scene.version), "Cache-Control": "no-store",
            "Server-Timing": f"render;dur={frame.render_ms:.3f}, encode;dur={frame.encode_ms:.3f}",
        }
        if body.format == "raw":
            headers |= {"X-Frame-Shape": f"{frame.height},{frame.eyes * frame.width},3", "X-Frame-Dtype": "uint8"}
        return Response(frame.encoded.data, media_type=frame.encoded.media_type, headers=headers)

    @app.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        session = StreamSession(websocket, state)
        await websocket.accept()
        if not state.streams.try_open(session):
            reason = "server shutting down" if state.streams.closing else \
                f"too many streams (at most {state.streams.max_streams}); retry later"
            await websocket.close(code=CLOSE_TRY_LATER, reason=reason)
            return
        try:
            await session.run()
        finally:
            state.streams.close(session)


def _add_ops_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> dict[str, object]:
        current = state.scenes.current
        return {"status": "ok", "version": VERSION, "device": str(state.device), "device_name": state.device_name,
                "backend": state.backend,
                "scene": None if current is None else current.name, "streams": len(state.streams.sessions),
                "uptime_s": round(time.time() - state.started, 3)}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.text(), media_type=CONTENT_TYPE)

    @app.post("/bench")
    async def bench(body: Annotated[BenchRequest, Depends(json_body(BenchRequest))]) -> dict[str, object]:
        if body.scene is not None:
            scene_file = state.scenes.directory.resolve(body.scene)
        elif state.scenes.current is not None:
            scene_file = state.scenes.current.path
        else:
            raise Conflict("no scene is loaded and none was named; pass \"scene\" (a path from GET /scenes)")
        config = bench_config(body, scene_file, state.backend, str(state.device))
        check_bench_bounds(config, state.config.limits)
        if state.bench_running:
            raise Conflict("a benchmark is already running; retry when it is done")
        state.bench_running = True
        try:
            result = await state.worker.call(run_benchmark, config)
        except (ValueError, BackendUnavailableError) as err:
            raise InvalidRequest(f"bench: {_hide_root(state, err)}") from None
        except FileNotFoundError as err:
            raise NotFound(f"bench: {_hide_root(state, err)}") from None
        finally:
            state.bench_running = False
        answer = result.to_json()
        name = body.scene or (state.scenes.current.name if state.scenes.current else scene_file.name)
        for row in answer["rows"]:  # the harness names the scene by its file path: show the served name instead
            row["scene"] = row["scene"].replace(str(scene_file), name)
        return answer


def _hide_root(state: ServerState, err: Exception) -> str:
    """The error's message with the served directory's absolute path replaced by ``<scenes_dir>``."""
    return str(err).replace(str(state.scenes.directory.root), "<scenes_dir>")
