"""Schema-based fuzzing of the render server (issue 7): it never answers 500, and every 4xx is JSON with a reason.

The routes parse their bodies themselves (``server.app.json_body``), so the OpenAPI document lists the routes but
not their bodies; the bodies' schema is the request models' JSON schema (``RenderRequest``, ``SceneLoadRequest``,
``BenchRequest``, ``StreamConfig``/``StreamPose``). Each field is drawn from that schema, from values near the
domain (rigid poses around the scene, pinhole K, extreme near/far/fov, surrogates and traversal in paths) or from
arbitrary JSON; whole bodies are then mutated (unknown keys, missing required keys, not an object, not JSON, wrong
content types). Most bodies are coherent requests (exactly one pose, K or a field of view, near < far, ...), as is or
with one field broken, so that the renderer is reached, not only the validation. The server is a real uvicorn
server on a free loopback port (torch backend, CPU) over a small random scene; image sides of valid requests stay
small so that renders are cheap, and ``/bench`` runs under tight bounds. At most ``GSCACHE_FUZZ_EXAMPLES`` (150)
examples per test; the server renders on one torch thread (tiny frames; immune to a busy CPU).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
pytest.importorskip("hypothesis")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from data import save_scene  # noqa: E402
from renderer import Splats, look_at  # noqa: E402
from server.config import ServerConfig, ServerLimits  # noqa: E402
from server.frames import DirectFrameSource, FrameRequest  # noqa: E402
from server.runner import BackgroundServer  # noqa: E402
from server.scenes import LoadedScene  # noqa: E402
from server.schemas import BenchRequest, RenderRequest, SceneLoadRequest, StreamConfig, StreamPose  # noqa: E402
from server.stream import FrameHeader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL_SIDE = 24  # largest image side of the valid requests drawn here
RENDER_BUDGET_PIXELS = 64 * 64  # per eye; larger requests (from arbitrary JSON) get a blank image, still encoded
EXAMPLES = int(os.environ.get("GSCACHE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
pytestmark = pytest.mark.timeout(300)


# ----- the server -----------------------------------------------------------------------------------------------
class BudgetSource(DirectFrameSource):
    """The server's renderer, but requests over the pixel budget get a blank frame (the fuzzer stays fast)."""

    def render(self, scene: LoadedScene, request: FrameRequest) -> torch.Tensor:
        width, height = request.size
        if width * height > RENDER_BUDGET_PIXELS:
            return torch.zeros(request.eyes, height, width, 3)
        return super().render(scene, request)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "served"
    (root / "sub").mkdir(parents=True)
    save_scene(root / "scene.ply", Splats.random(200, sh_degree=1, seed=0))  # cheap renders: many examples
    (root / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2\n")
    (root / "empty.ply").write_bytes(b"")
    (root / "loop.ply").symlink_to(root / "loop.ply")
    return root


@pytest.fixture(scope="module")
def server(served: Path) -> Iterator[BackgroundServer]:
    limits = ServerLimits(bench_max_frames=3, bench_max_megapixels=0.005)
    config = ServerConfig(scenes_dir=served, scene=served / "scene.ply", port=0, backend="torch", device="cpu",
                          limits=limits)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny renders: one thread is as fast, and immune to OpenMP threads waiting on a busy CPU
    try:
        with BackgroundServer(config, BudgetSource(backend="torch")) as running:
            yield running
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def check_answer(response: httpx.Response) -> None:
    """No 5xx but a 503 with Retry-After; every 4xx (and 503) is a JSON object with a short kind and a reason."""
    status = response.status_code
    event(f"HTTP {status}")  # pytest --hypothesis-show-statistics shows what the fuzzer reached
    assert status < 500 or (status == 503 and "retry-after" in response.headers), (status, response.text[:500])
    if status >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), response.headers
        body = response.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str) and body["error"], body
        assert isinstance(body.get("detail"), str) and body["detail"].strip(), body
        assert "Traceback" not in response.text


# ----- strategies: from the request models' JSON schema, near the domain, or anything --------------------------
# no integers in (2 * SMALL_SIDE, 4096]: valid but large image sides would make renders slow
JUNK_INTS = st.integers(max_value=2 * SMALL_SIDE) | st.integers(min_value=4097)
JSON_ATOMS = (st.none() | st.booleans() | JUNK_INTS | st.floats()
              | st.text(max_size=12) | st.sampled_from(["", "NaN", "1e309", "-1", "\x00", "\ud800", "📷"]))
ANY_JSON = st.recursive(JSON_ATOMS, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=12)
# JSON texts that json.dumps cannot write: over-long integers (a ValueError, not a JSONDecodeError, in json.loads),
# escaped lone surrogates, a byte-order mark, duplicate keys, deep nesting, overflowing numbers
NASTY_JSON = st.sampled_from([
    '{"width": ' + "9" * 5000 + "}", "9" * 4301, '{"type": "pose", "id": ' + "1" * 4400 + "}", '{"path": "\\ud800"}',
    '{"scene": "\\udcff.ply"}', '{"a": 1e99999}', "[" * 3000 + "]" * 3000, '{"width": -0, "width": 16}',
    "\ufeff{}", '"\\u0000"', '{"world_to_camera": [[1e308, 1e308, 1e308, 1e308]]}', "{'width': 1}", "",
])
NUMBERS = (st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e300, 1.7976931348623157e308, 1e-12, 1e12]))


def from_schema(schema: dict[str, Any], defs: dict[str, Any], name: str = "") -> st.SearchStrategy:
    """Values of a JSON schema (the subset pydantic emits for the request models), sizes kept small."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, name)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, name) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        if "exclusiveMaximum" in schema:
            high = schema["exclusiveMaximum"] - 1
        if name in ("width", "height"):
            high = SMALL_SIDE
        if name == "timed_frames":
            high = 4
        if name == "grid":
            high = 2  # tiling the scene 8 x 8 is valid but slow on a CPU
        return st.integers(low, high)
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        return st.floats(low, high, exclude_min="exclusiveMinimum" in schema,
                         exclude_max="exclusiveMaximum" in schema, allow_nan=False, allow_infinity=False)
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind == "array":
        if "prefixItems" in schema:
            return st.tuples(*(from_schema(s, defs, name) for s in schema["prefixItems"])).map(list)
        return st.lists(from_schema(schema.get("items", {}), defs, name), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 5), 5))
    if kind == "object":
        return objects(schema, defs, {})
    return ANY_JSON


@st.composite
def _rigid(draw: st.DrawFn) -> list[list[float]]:
    """A rigid 4x4: a camera looking at the scene from near or far, or a random rotation with any translation."""
    if draw(st.booleans()):
        direction = draw(st.tuples(*[st.floats(-1, 1)] * 3))
        distance = draw(st.sampled_from([0.01, 0.3, 1.0, 2.0, 5.0, 50.0, 1e4, 1e8]))
        norm = math.sqrt(sum(v * v for v in direction))
        if norm < 1e-3:
            direction, norm = (0.0, 0.0, -1.0), 1.0
        eye = [distance * v / norm for v in direction]
        up = (0.0, -1.0, 0.0) if abs(direction[1]) < 0.9 * norm else (1.0, 0.0, 0.0)
        return look_at(eye, (0.0, 0.0, 0.0), up).tolist()
    q = draw(st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda v: sum(x * x for x in v) > 1e-3))
    w, x, y, z = (v / math.sqrt(sum(c * c for c in q)) for v in q)
    rotation = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    t = draw(st.tuples(NUMBERS, NUMBERS, NUMBERS))
    return [[*rotation[i], t[i]] for i in range(3)] + [[0.0, 0.0, 0.0, 1.0]]


INTRINSICS = st.builds(lambda fx, fy, cx, cy: [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]],
                       NUMBERS | st.floats(1, 100), NUMBERS | st.floats(1, 100), NUMBERS, NUMBERS)
SCENE_PATHS = st.sampled_from([
    "scene.ply", "./scene.ply", "sub/../scene.ply", "bad.ply", "empty.ply", "loop.ply", "sub", ".",
    "missing.ply", "../served/scene.ply", "/etc/passwd", "~root/x.ply", "sub\\x.ply", "a\x00b.ply", "\ud800.ply",
    "\udcff", "scene.ply/", "scene.ply/x", "x" * 300, "%2e%2e/x.ply", "sub//scene.ply", " scene.ply",
])
RENDERER_NAMES = st.sampled_from(["torch", "auto", "native", "gsplat", "nope", "", "TORCH"])
DOMAIN: dict[str, st.SearchStrategy] = {
    "world_to_camera": _rigid(), "c2w_opengl": _rigid(), "K": INTRINSICS, "K_left": INTRINSICS,
    "K_right": INTRINSICS, "fov_x_deg": NUMBERS | st.sampled_from([5e-324, 1e-9, 179.999999, 90.0]),
    "near": NUMBERS, "far": NUMBERS, "ipd": NUMBERS, "id": st.integers(-(2**64), 2**64),
    "path": SCENE_PATHS, "scene": SCENE_PATHS | st.none(), "renderers": st.lists(RENDERER_NAMES, max_size=5),
    "reference": RENDERER_NAMES | st.none(), "width": st.integers(-2, SMALL_SIDE),
    "height": st.integers(-2, SMALL_SIDE), "timed_frames": st.integers(-1, 5),
}


@st.composite
def objects(draw: st.DrawFn, schema: dict[str, Any], defs: dict[str, Any], domain: dict[str, st.SearchStrategy]):
    """An object of ``schema``: each field from the schema, the domain or anything; then maybe mutated."""
    required = set(schema.get("required", []))
    body: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if name not in required and not draw(st.booleans()):
            continue
        sources = [from_schema(prop, defs, name)] * 2 + ([domain[name]] * 2 if name in domain else []) + [ANY_JSON]
        body[name] = draw(st.one_of(sources))
    mutation = draw(st.sampled_from(["none"] * 6 + ["drop", "extra", "not-object"]))
    if mutation == "drop" and body:
        body.pop(draw(st.sampled_from(sorted(body))))
    elif mutation == "extra":
        body[draw(st.text(min_size=1, max_size=10))] = draw(ANY_JSON)
    elif mutation == "not-object":
        return draw(ANY_JSON)
    return body


POSITIVE = st.floats(1e-9, 1e9) | st.sampled_from([5e-324, 1e-300, 1.0, 1e300])
POSITIVE_K = st.builds(lambda fx, fy, cx, cy: [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]],
                       POSITIVE | st.floats(1, 100), POSITIVE | st.floats(1, 100), NUMBERS | st.floats(-50, 50),
                       NUMBERS | st.floats(-50, 50))


@st.composite
def coherent_view(draw: st.DrawFn) -> dict[str, Any]:
    """View fields that pass the cross-field checks: K or a field of view, near < far, per-eye K with stereo."""
    body: dict[str, Any] = {}
    for side in ("width", "height"):
        if draw(st.booleans()):
            body[side] = draw(st.integers(1, SMALL_SIDE))
    intrinsics = draw(st.sampled_from(["default", "K", "fov"]))
    if intrinsics == "K":
        body["K"] = draw(POSITIVE_K)
    elif intrinsics == "fov":
        body["fov_x_deg"] = draw(st.floats(0, 180, exclude_min=True, exclude_max=True)
                                 | st.sampled_from([5e-324, 1e-310, 1e-300, 1e-9, 179.9999999]))
    if draw(st.booleans()):
        near, far = sorted(draw(st.lists(POSITIVE, min_size=2, max_size=2, unique=True)))
        body |= {"near": near, "far": far}
    if draw(st.booleans()):
        body["stereo"] = True
        body["ipd"] = draw(st.floats(0, 100))
        for key in ("K_left", "K_right"):
            if draw(st.booleans()):
                body[key] = draw(POSITIVE_K)
    if draw(st.booleans()):
        body["background"] = draw(st.lists(st.floats(0, 1), min_size=3, max_size=3))
    if draw(st.booleans()):
        body["format"] = draw(st.sampled_from(["png", "jpeg", "raw"]))
        body["quality"] = draw(st.integers(1, 100))
    return body


@st.composite
def coherent_pose(draw: st.DrawFn) -> dict[str, Any]:
    return {draw(st.sampled_from(["world_to_camera", "c2w_opengl"])): draw(_rigid())}


@st.composite
def coherent_bench(draw: st.DrawFn) -> dict[str, Any]:
    body = {"width": draw(st.integers(1, 16)), "height": draw(st.integers(1, 16)),
            "eyes": draw(st.sampled_from([1, 2])), "warmup_frames": draw(st.integers(0, 1)),
            "timed_frames": draw(st.integers(1, 3))}
    for key, values in (("scene", st.sampled_from(["scene.ply", "sub/../scene.ply", "bad.ply"])),
                        ("grid", st.integers(1, 2)), ("sh3", st.booleans()), ("quality", st.booleans()),
                        ("paths", st.lists(st.sampled_from(["orbit", "head"]), min_size=1, max_size=2)),
                        ("renderers", st.lists(RENDERER_NAMES, min_size=1, max_size=2)),
                        ("reference", RENDERER_NAMES), ("fov_x_deg", st.floats(1, 179))):
        if draw(st.booleans()):
            body[key] = draw(values)
    return body


@st.composite
def one_field_broken(draw: st.DrawFn, body: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``body`` with one field of ``schema`` replaced by a schema value, a domain value or anything."""
    name = draw(st.sampled_from(sorted(schema["properties"])))
    prop = schema["properties"][name]
    sources = [from_schema(prop, schema.get("$defs", {}), name), ANY_JSON]
    return {**body, name: draw(st.one_of(sources + ([DOMAIN[name]] if name in DOMAIN else [])))}


def bodies(model: type[BaseModel], coherent: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Coherent requests (half), coherent ones with one field broken, and bodies drawn from the schema."""
    schema = model.model_json_schema()
    generic = objects(schema, schema.get("$defs", {}), DOMAIN)
    if coherent is None:
        return generic
    return st.one_of(coherent, coherent, coherent.flatmap(lambda b: one_field_broken(b, schema)), generic)


RENDER_BODIES = bodies(RenderRequest, st.builds(lambda view, pose: view | pose, coherent_view(), coherent_pose()))
BENCH_BODIES = bodies(BenchRequest, coherent_bench())


# ----- HTTP -----------------------------------------------------------------------------------------------------
def post(http: httpx.Client, route: str, body: Any) -> httpx.Response:
    content = json.dumps(body)  # NaN and Infinity stay in: Python's JSON reader accepts them
    response = http.post(route, content=content, headers={"content-type": "application/json"})
    check_answer(response)
    return response


FUZZED_POSTS = {"/render", "/scenes/load", "/bench"}


def test_every_route_with_a_body_is_fuzzed(server: BackgroundServer) -> None:
    """A new POST route needs a strategy here (the OpenAPI document lists routes, not their bodies)."""
    openapi = server.server.config.app.openapi()
    posts = {path for path, item in openapi["paths"].items() if "post" in item}
    assert posts == FUZZED_POSTS


@FUZZ
@given(body=RENDER_BODIES)
def test_fuzz_render(http: httpx.Client, body: Any) -> None:
    response = post(http, "/render", body)
    if response.status_code == 200:
        assert int(response.headers["x-frame-width"]) >= 1 and response.content


@FUZZ
@given(body=bodies(SceneLoadRequest))
def test_fuzz_scene_load(http: httpx.Client, body: Any) -> None:
    post(http, "/scenes/load", body)


@FUZZ
@given(body=BENCH_BODIES)
def test_fuzz_bench(http: httpx.Client, body: Any) -> None:
    response = post(http, "/bench", body)
    if response.status_code == 200:
        assert response.json()["rows"]


@FUZZ
@given(route=st.sampled_from(sorted(FUZZED_POSTS)),
       content=st.binary(max_size=64) | st.text(max_size=64).map(str.encode) | NASTY_JSON.map(str.encode)
       | ANY_JSON.map(lambda v: json.dumps(v).encode()),
       content_type=st.sampled_from(["application/json", "application/json; charset=latin-1", "APPLICATION/JSON",
                                     "text/plain", "multipart/form-data; boundary=x", "", "application/json\x7f"]))
def test_fuzz_raw_bodies(http: httpx.Client, route: str, content: bytes, content_type: str) -> None:
    check_answer(http.post(route, content=content, headers={"content-type": content_type}))


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       route=st.sampled_from(["/health", "/scenes", "/metrics", "/render", "/scenes/load", "/bench", "/stream", "/"])
       | st.text(alphabet=string.ascii_letters + string.digits + "/._-~%", max_size=30).map(lambda p: "/" + p),
       query=st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=6), st.text(max_size=10),
                             max_size=3))
def test_fuzz_routes_and_methods(http: httpx.Client, method: str, route: str, query: dict[str, str]) -> None:
    if method == "POST" and route in FUZZED_POSTS:
        return  # POST bodies are fuzzed above
    response = http.request(method, route, params=query, headers={"content-type": "application/json"})
    check_answer(response)


# ----- WebSocket ------------------------------------------------------------------------------------------------
def _stream_messages() -> st.SearchStrategy:
    config = bodies(StreamConfig, coherent_view().map(lambda v: {"type": "config", **v})).map(
        lambda b: {"type": "config", **b} if isinstance(b, dict) and "type" not in b else b)
    pose = bodies(StreamPose, st.builds(lambda p, i: {"type": "pose", "id": i, **p}, coherent_pose(),
                                        st.integers(-(2**63), 2**63 - 1)))
    text = st.one_of(config, pose, pose, ANY_JSON).map(json.dumps) | st.text(max_size=40) | NASTY_JSON
    return st.lists(text | st.binary(max_size=32), min_size=1, max_size=6)


VALID_CONFIG = json.dumps({"type": "config", "width": 16, "height": 12, "format": "jpeg"})
VALID_POSE = {"type": "pose", "world_to_camera": look_at((0.0, 0.0, -4.0), (0.0, 0.0, 0.0), (0.0, -1.0, 0.0)).tolist()}


@FUZZ
@given(messages=_stream_messages())
def test_fuzz_stream_messages(server: BackgroundServer, messages: list[str | bytes]) -> None:
    """Any messages: the stream answers errors as JSON (4xx, or 503), stays open, and renders the next good pose."""

    async def run() -> None:
        async with connect(server.ws_url + "/stream", open_timeout=60, close_timeout=10) as ws:
            for message in messages:
                await ws.send(message)
            await ws.send(VALID_CONFIG)
            final_id = 2**62
            await ws.send(json.dumps({**VALID_POSE, "id": final_id}))
            while True:
                try:
                    reply = await asyncio.wait_for(ws.recv(), 120)
                except ConnectionClosed as closed:
                    pytest.fail(f"the stream closed ({closed.rcvd}) after {messages!r}")
                event("frame" if isinstance(reply, bytes) else "error reply")
                if isinstance(reply, bytes):
                    header = FrameHeader.unpack(reply)
                    if header.pose_id == final_id:
                        assert (header.width, header.height, header.format) == (16, 12, "jpeg")
                        return
                    continue
                error = json.loads(reply)
                assert error["type"] == "error" and isinstance(error["detail"], str) and error["detail"], error
                assert 400 <= error["status"] < 500 or error["status"] == 503, error

    asyncio.run(run())


def test_server_still_serves_after_fuzzing(http: httpx.Client, server: BackgroundServer) -> None:
    assert http.get("/health").json()["status"] == "ok"
    deadline = time.monotonic() + 10
    while server.state.inflight and time.monotonic() < deadline:  # the answer may arrive before its bookkeeping
        time.sleep(0.01)
    assert server.state.inflight == 0 and not server.state.streams.sessions
    metrics = http.get("/metrics").text
    internal = [line for line in metrics.splitlines() if 'kind="internal error"' in line and not line.startswith("#")]
    assert all(line.endswith(" 0") or line.endswith(" 0.0") for line in internal), internal
