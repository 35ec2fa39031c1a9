"""The REST contract (issue 13): strict types, one error body, the schema, logging, and health
under large bodies. One regression test per finding, from its reproducer:

- 2: a large JSON body was parsed on the event loop (1e6 items stalled /livez 2.7 s);
- 3: a malformed multipart body to a JSON route was a 500 (see also test_service.py);
- 9: loose types, any Content-Type, list-wrapped 400 bodies, a schema without item types;
- 10: every client 400 was logged at ERROR with a traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from bundle_factory import make_bundle
from server_ready import wait_ready
from starlette.testclient import TestClient
from test_service import ERROR_TYPES, LATENT, _client, _error, _inputs

from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.http.errors import ErrorType
from sculptserve.serving.http.guard import OPEN_PATHS

MAX_BODY = 8 * 2**20  # SCULPT_REQUEST_MAX_BYTES's default


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("contract") / "bundle", latent_dim=LATENT)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> Iterator[TestClient]:
    with _client(monkeypatch, bundle_dir) as c:
        yield c


# -- finding 9: strict types ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"n": True}, "n: Input should be a valid integer (got True)"),
        ({"n": "5"}, "n: Input should be a valid integer (got '5')"),
        ({"n": 2.5}, "fractional part"),
        ({"n": 2, "seed": False}, "seed: Input should be a valid integer"),
        ({"n": 2, "fixed": {"0": True}}, "fixed.0: Input should be a valid number"),
        ({"n": 2, "fixed": {"0": "1.5"}}, "fixed.0: Input should be a valid number"),
        ({"n": 2, "samples": 3}, "samples: Extra inputs are not permitted"),
    ],
)
def test_generate_types_are_strict(client: TestClient, body: dict[str, Any], phrase: str) -> None:
    resp = client.post("/generate", json=body)
    assert resp.status_code == 400, resp.text
    assert phrase in _error(resp)
    assert resp.json()["error_type"] == "validation_error"


def test_an_integral_number_is_an_integer(client: TestClient) -> None:
    """JSON has one number type: 3.0 is 3 (JSON Schema's reading too), unlike true or "3"."""
    resp = client.post("/generate", json={"n": 3.0, "seed": 7.0})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["samples"]) == 3
    assert resp.json()["seed"] == 7


@pytest.mark.parametrize(
    ("item", "phrase"),
    [
        ([[0.5] * 4] * 3 + [[0.5, True, 0.5, 0.5]], "inputs[0]: nested list [4, 4]: [3][1]"),
        ([[0.5] * 4] * 3 + [[0.5, None, 0.5, 0.5]], "[3][1]: Input should be a valid number"),
        ([[0.5] * 4] * 4 + [[0.5] * 4], "nested list has shape [5, 4]"),
        ([[0.5] * 4] * 3 + [[0.5] * 3], "[3]: List should have at least 4 items"),
        ([[1e39] * 4] * 4, "within float32"),
        (True, "got a boolean"),
        ({"b64": "AAAA", "shape": [4, 4]}, "raw array: b64"),
        ({"b64": "A" * 88, "shape": [2, 8]}, "raw array: shape: [2, 8] is not a layout"),
        ({"b64": "A" * 88, "shape": [4, 4], "dtype": "float64"}, "raw array: dtype"),
    ],
)
def test_input_items_are_strict(client: TestClient, item: Any, phrase: str) -> None:
    resp = client.post("/embed", json={"inputs": [item]})
    assert resp.status_code == 400, resp.text
    assert phrase in _error(resp)


# -- finding 9: one error body, from every source -----------------------------------------------


def _post_json(route: str, body: Any) -> Callable[[TestClient], Any]:
    return lambda c: c.post(route, json=body)


ERROR_CASES: list[tuple[str, Callable[[TestClient], Any], int, ErrorType]] = [
    (
        "invalid JSON",
        lambda c: c.post("/embed", content=b"{bad", headers={"content-type": "application/json"}),
        400,
        ErrorType.INVALID_JSON,
    ),
    ("schema", _post_json("/generate", {"n": True}), 400, ErrorType.VALIDATION),
    ("not an object", _post_json("/embed", [1, 2]), 400, ErrorType.VALIDATION),
    (
        "unusable input",
        _post_json("/embed", {"inputs": ["bm90IGFuIGltYWdl"]}),
        400,
        ErrorType.INVALID_INPUT,
    ),
    (
        "malformed multipart",
        lambda c: c.post(
            "/embed/files",
            content=b"{}",
            headers={"content-type": "multipart/form-data; boundary=x"},
        ),
        400,
        ErrorType.INVALID_FORM,
    ),
    (
        "text/plain",
        lambda c: c.post("/embed", content=b"{}", headers={"content-type": "text/plain"}),
        415,
        ErrorType.UNSUPPORTED_MEDIA_TYPE,
    ),
    ("wrong method", lambda c: c.get("/embed"), 405, ErrorType.METHOD_NOT_ALLOWED),
    ("wrong method on docs", lambda c: c.delete("/docs.json"), 405, ErrorType.METHOD_NOT_ALLOWED),
]


@pytest.mark.parametrize(
    ("what", "call", "status", "error_type"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_every_error_is_one_object(
    client: TestClient,
    what: str,
    call: Callable[[TestClient], Any],
    status: int,
    error_type: ErrorType,
) -> None:
    resp = call(client)
    assert resp.status_code == status, resp.text
    _error(resp)  # {"error": str, "error_type": one of ERROR_TYPES}, nothing else
    assert resp.json()["error_type"] == error_type.value
    if status == 405:
        assert "POST" in resp.headers["allow"] or "GET" in resp.headers["allow"]


def test_guard_errors_have_the_same_shape(
    monkeypatch: pytest.MonkeyPatch, bundle_dir: Path
) -> None:
    env = {"SCULPT_API_KEY": "k", "SCULPT_REQUEST_MAX_BYTES": "1000"}
    with _client(monkeypatch, bundle_dir, **env) as c:
        unauthorized = c.post("/embed", json={"inputs": []})
        assert unauthorized.status_code == 401
        _error(unauthorized)
        assert unauthorized.json()["error_type"] == "unauthorized"
        big = c.post("/embed", content=b" " * 2000, headers={"authorization": "Bearer k"})
        assert big.status_code == 413
        _error(big)
        assert big.json()["error_type"] == "payload_too_large"


def test_a_bug_is_a_500_with_the_error_body_and_a_traceback(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(EmbeddingApp, "embed", broken)
    with caplog.at_level(logging.INFO):
        resp = client.post("/embed", json={"inputs": _inputs(1).tolist()})
    assert resp.status_code == 500
    assert "simulated" not in _error(resp)  # internals stay in the log
    assert resp.json()["error_type"] == "internal_error"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "simulated bug" in caplog.text


def test_metrics_count_rest_requests_by_status(client: TestClient) -> None:
    """The REST routes answer before BentoML's router, but BentoML's request metrics (which
    the 5xx and latency alerts read) still see them."""
    client.post("/embed", json={"inputs": _inputs(1).tolist()})
    client.post("/embed", json={"inputs": []})
    client.get("/embed")
    metrics = client.get("/metrics").text
    for status in ("200", "400", "405"):
        assert re.search(
            rf'bentoml_service_request_total{{[^}}]*endpoint="/embed",'
            rf'http_response_code="{status}"[^}}]*}} 1\.0',
            metrics,
        ), status


# -- finding 10: a client error is one log line -------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        _post_json("/generate", {"n": True}),
        _post_json("/embed", {"inputs": ["bm90IGFuIGltYWdl"]}),
        lambda c: c.post("/embed", content=b"{}", headers={"content-type": "text/plain"}),
    ],
    ids=["schema", "unusable input", "media type"],
)
def test_a_client_error_is_one_info_line_without_traceback(
    client: TestClient, caplog: pytest.LogCaptureFixture, call: Callable[[TestClient], Any]
) -> None:
    with caplog.at_level(logging.DEBUG):
        resp = call(client)
    assert 400 <= resp.status_code < 500
    ours = [r for r in caplog.records if r.name.startswith("sculptserve")]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    record = ours[0]
    assert record.levelno in (logging.INFO, logging.WARNING)
    assert record.exc_info is None and record.stack_info is None
    assert resp.json()["error"] in record.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- finding 9: the schema states the real contract ---------------------------------------------


def test_docs_json_states_the_contract(monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> None:
    with _client(monkeypatch, bundle_dir, SCULPT_REQUEST_MAX_ITEMS="7") as c:
        spec = c.get("/docs.json").json()
    assert spec["openapi"].startswith("3.1")
    paths = spec["paths"]
    assert set(paths["/info"]) == set(paths["/drift"]) == {"get", "post"}
    files = paths["/embed/files"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert files["encoding"]["files"]["contentType"] == "image/png, image/jpeg"
    schemas = spec["components"]["schemas"]
    form = schemas["EmbedFilesForm"]["properties"]["files"]
    assert form["items"] == {"type": "string", "format": "binary"}
    assert form["maxItems"] == 7

    inputs = schemas["EmbedRequest"]["properties"]["inputs"]
    assert (inputs["minItems"], inputs["maxItems"]) == (1, 7)
    forms = {f["title"]: f for f in inputs["items"]["anyOf"]}
    assert set(forms) == {
        "nested list [1, 4, 4]",
        "nested list [4, 4]",
        "nested list [4, 4, 1]",
        "image",
        "raw array",
    }
    chw = forms["nested list [1, 4, 4]"]
    assert (chw["minItems"], chw["maxItems"]) == (1, 1)
    row = chw["items"]["items"]
    assert (row["minItems"], row["maxItems"]) == (4, 4)
    assert row["items"] == {
        "type": "number",
        "format": "float",
        "minimum": -float(np.finfo(np.float32).max),
        "maximum": float(np.finfo(np.float32).max),
    }
    raw = forms["raw array"]
    assert raw["additionalProperties"] is False
    assert raw["properties"]["shape"]["enum"] == [[1, 4, 4], [4, 4], [4, 4, 1]]
    assert raw["properties"]["b64"]["minLength"] == raw["properties"]["b64"]["maxLength"] == 88
    assert forms["image"]["format"] == "image-base64"
    assert schemas["EmbedRequest"]["properties"]["encoding"]["enum"] == [
        "float32",
        "float16",
        "uint8",
        "int8",
    ]

    generate = schemas["GenerateRequest"]
    assert generate["additionalProperties"] is False
    n = generate["properties"]["n"]
    assert (n["type"], n["minimum"], n["maximum"]) == ("integer", 1, 256)
    seed = generate["properties"]["seed"]
    assert (seed["minimum"], seed["maximum"]) == (0, 2**63 - 1)
    fixed = generate["properties"]["fixed"]["anyOf"][0]
    assert fixed["propertyNames"] == {"enum": ["0", "1", "2"]}

    error = schemas["ErrorBody"]
    assert set(error["required"]) == {"error", "error_type"}
    assert set(error["properties"]["error_type"]["enum"]) == ERROR_TYPES
    for path, methods in paths.items():
        for method, op in methods.items():
            for status, answer in op["responses"].items():
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                if status != "200":
                    assert ref.endswith("/ErrorBody"), (path, method, status)
            assert "401" not in op["responses"]  # no key set


def test_docs_json_states_the_key_when_one_is_set(
    monkeypatch: pytest.MonkeyPatch, bundle_dir: Path
) -> None:
    with _client(monkeypatch, bundle_dir, SCULPT_API_KEY="k") as c:
        spec = c.get("/docs.json").json()  # open: no key needed
    assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, methods in spec["paths"].items():
        for op in methods.values():
            if path in OPEN_PATHS:  # the protocol's health routes are probes: open, and say so
                assert op["security"] == [] and "401" not in op["responses"], path
            else:
                assert op["security"] == [{"bearer": []}] and "401" in op["responses"], path
    assert {"/v2/health/live", "/v2/health/ready"} <= set(spec["paths"]) & OPEN_PATHS


def test_tabular_bundle_schema(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "tab", input_shape=(5,), latent_dim=2)
    with _client(monkeypatch, bundle) as c:
        schemas = c.get("/docs.json").json()["components"]["schemas"]
    forms = {f["title"] for f in schemas["EmbedRequest"]["properties"]["inputs"]["items"]["anyOf"]}
    assert forms == {"nested list [5]", "raw array"}  # no image strings
    output = schemas["GenerateRequest"]["properties"]["output"]
    assert output.get("enum", [output.get("const")]) == ["array"]


# -- finding 2: health answers while large bodies are parsed ------------------------------------


def _max_size_bodies() -> list[bytes]:
    """Bodies just under the 8 MiB default limit: the reproducer's shape (a million+ tiny
    items) and 256 items of long strings (few values, so they pass the size pre-check)."""
    many = b'{"inputs": [' + b",".join([b"[0.5]"] * 1_390_000) + b"]}"
    text = base64.b64encode(os.urandom(24_000)).decode()
    long = json.dumps({"inputs": [text] * 256}).encode()
    assert all(len(b) <= MAX_BODY for b in (many, long)), [len(many), len(long)]
    assert len(many) > 7 * 2**20 and len(long) > 7 * 2**20
    return [many, long, many, long]


def _health_under_load(
    post: Callable[[bytes], int], probe: Callable[[], int], bodies: list[bytes]
) -> tuple[float, list[int]]:
    """The slowest health answer while the bodies are in flight, and their statuses."""
    slowest = 0.0
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(post, b) for b in bodies]
        while not all(f.done() for f in futures):
            start = time.perf_counter()
            assert probe() == 200
            slowest = max(slowest, time.perf_counter() - start)
            time.sleep(0.01)
        statuses = [f.result() for f in futures]
    return slowest, statuses


def test_health_answers_while_max_size_bodies_are_parsed(client: TestClient) -> None:
    """Finding 2, in-process: 4 concurrent 8 MiB bodies; /livez and /readyz within 1 s."""
    bodies = _max_size_bodies()
    headers = {"content-type": "application/json"}
    for probe_path in ("/livez", "/readyz"):
        slowest, statuses = _health_under_load(
            lambda b: client.post("/embed", content=b, headers=headers).status_code,
            lambda p=probe_path: client.get(p).status_code,
            bodies,
        )
        print(f"in-process {probe_path}: slowest {slowest:.3f} s under 4 bodies of 8 MiB")
        assert statuses == [400] * 4
        assert slowest < 1.0, f"{probe_path} took {slowest:.2f} s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_health_answers_while_max_size_bodies_are_served(bundle_dir: Path, tmp_path: Path) -> None:
    """Finding 2 against a real `bentoml serve`: the probes' timeouts are 2 s (readiness) and
    5 s (liveness); both answer within 1 s while 4 maximum-size bodies are in flight."""
    port = _free_port()
    env = {
        **os.environ,
        "SCULPT_BUNDLE": str(bundle_dir),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "1",
    }
    env.pop("SCULPT_API_KEY", None)
    cmd = [
        sys.executable, "-m", "bentoml", "serve", "sculptserve.serving.http.service:SculptService",
        "--port", str(port), "--host", "127.0.0.1",
    ]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, lambda: proc.stdout.read() if proc.stdout else "")
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=url, timeout=60) as probe_client:
            for probe_path in ("/livez", "/readyz"):

                def post(body: bytes) -> int:
                    return httpx.post(
                        f"{url}/embed", content=body, headers=headers, timeout=60
                    ).status_code

                slowest, statuses = _health_under_load(
                    post,
                    lambda p=probe_path: probe_client.get(p).status_code,
                    _max_size_bodies(),
                )
                print(
                    f"bentoml serve {probe_path}: slowest {slowest:.3f} s under 4 bodies of 8 MiB"
                )
                assert statuses == [400] * 4
                assert slowest < 1.0, f"{probe_path} took {slowest:.2f} s"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
