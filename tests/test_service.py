"""The REST service in-process: starlette's TestClient over ``SculptService.to_asgi()``.

Every test builds a fresh app after setting the environment: BentoML creates the service
instance (which reads $SCULPT_BUNDLE) at ASGI startup, and the HTTP guard reads its settings
when the middleware stack is built, so monkeypatched variables apply to the next client.
"""

from __future__ import annotations

import base64
import io
import json
import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import make_bundle, toy_encode, toy_weights
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from sculptserve.bundle.load import bundle_digest
from sculptserve.serving.http.service import SculptService

SHAPE = (1, 4, 4)
LATENT = 3
API_ROUTES = ("/embed", "/reconstruct", "/generate", "/info", "/drift")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("svc") / "bundle", latent_dim=LATENT)


@pytest.fixture(scope="module")
def tabular_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("tab") / "bundle", input_shape=(5,), latent_dim=2)


def fresh_asgi_app() -> Any:
    """``SculptService.to_asgi()``, after dropping the previous app's BentoML metrics.

    Outside ``bentoml serve`` BentoML registers its request metrics on the default registry
    once per app, so a second app in one process would collide (a test-only situation).
    """
    import prometheus_client

    registry = prometheus_client.REGISTRY
    for collector in list(registry._collector_to_names):
        if any(n.startswith("bentoml_") for n in registry._collector_to_names[collector]):
            registry.unregister(collector)
    return SculptService.to_asgi()


def _client(monkeypatch: pytest.MonkeyPatch, bundle: Path, **env: str) -> TestClient:
    monkeypatch.setenv("SCULPT_BUNDLE", str(bundle))
    monkeypatch.delenv("SCULPT_API_KEY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return TestClient(fresh_asgi_app())


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> Iterator[TestClient]:
    with _client(monkeypatch, bundle_dir) as c:
        yield c


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE)).astype(np.float32)


ERROR_TYPES = {
    "invalid_json",
    "invalid_form",
    "validation_error",
    "invalid_input",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "internal_error",
    "unavailable",
}


def _error(resp: Any) -> str:
    """The error body as text, after checking its one shape: {"error": str, "error_type": T}."""
    assert resp.headers["content-type"] == "application/json", resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error", "error_type"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert body["error_type"] in ERROR_TYPES, body
    return json.dumps(body)


def _png_b64(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _raw(array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return {"b64": base64.b64encode(data).decode("ascii"), "shape": list(array.shape)}


# -- happy paths ------------------------------------------------------------------------------


def test_embed_float32_matches_the_model(client: TestClient) -> None:
    x = _inputs(5)
    resp = client.post("/embed", json={"inputs": x.tolist(), "encoding": "float32"})
    assert resp.status_code == 200, resp.text
    got = np.asarray(resp.json()["embeddings"], dtype=np.float32)
    w_enc, _ = toy_weights(SHAPE, LATENT)
    np.testing.assert_allclose(got, toy_encode(x, w_enc), atol=1e-5)


def test_embed_accepts_png_and_raw_forms(client: TestClient) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(4, 4))
    raw = _inputs(1)[0]
    resp = client.post("/embed", json={"inputs": [_png_b64(pixels), _raw(raw)]})
    assert resp.status_code == 200, resp.text
    got = np.asarray(resp.json()["embeddings"], dtype=np.float32)
    w_enc, _ = toy_weights(SHAPE, LATENT)
    expected = toy_encode(np.stack([pixels[None] / 255.0, raw]).astype(np.float32), w_enc)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_embed_multipart_image_files(client: TestClient) -> None:
    from PIL import Image

    pixels = np.random.default_rng(2).integers(0, 256, size=(3, 4, 4))
    files = []
    for i, px in enumerate(pixels):
        buf = io.BytesIO()
        Image.fromarray(px.astype(np.uint8)).save(buf, format="PNG")
        files.append(("files", (f"img{i}.png", buf.getvalue(), "image/png")))
    resp = client.post("/embed/files", files=files, data={"encoding": "float32"})
    assert resp.status_code == 200, resp.text
    got = np.asarray(resp.json()["embeddings"], dtype=np.float32)
    w_enc, _ = toy_weights(SHAPE, LATENT)
    np.testing.assert_allclose(got, toy_encode(pixels[:, None] / 255.0, w_enc), atol=1e-5)
    bad = client.post("/embed/files", files=[("files", ("x.png", b"not a png", "image/png"))])
    assert bad.status_code == 400 and "item 0" in _error(bad)


@pytest.mark.parametrize(
    ("kwargs", "status", "phrase"),
    [
        # a urlencoded form is not multipart
        ({"data": {"files": "{}", "encoding": "float32"}}, 415, "multipart/form-data"),
        ({"files": [("encoding", ("e.txt", b"x", "text/plain"))]}, 400, "files: Field required"),
        (
            {
                "content": b"\x00garbage",
                "headers": {"content-type": "multipart/form-data; boundary=zz"},
            },
            400,
            "multipart",
        ),
        (
            {"content": b"--zz--", "headers": {"content-type": "multipart/form-data"}},
            400,
            "boundary",
        ),
        (
            {"files": [("files", ("a.png", b"\x89PNG", "image/png"))], "data": {"encoding": "gif"}},
            400,
            "encoding: Input should be",
        ),
    ],
)
def test_embed_files_malformed_forms_are_4xx(
    client: TestClient, kwargs: dict[str, Any], status: int, phrase: str
) -> None:
    resp = client.post("/embed/files", **kwargs)
    assert resp.status_code == status, resp.text
    assert phrase in _error(resp)


def test_embed_files_random_bodies_never_5xx(client: TestClient) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.binary(max_size=300), boundary=st.sampled_from(["zz", "", "a b"]))
    def check(body: bytes, boundary: str) -> None:
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        resp = client.post("/embed/files", content=body, headers=headers)
        assert resp.status_code < 500, resp.text

    check()


@pytest.mark.parametrize(
    ("encoding", "lo", "hi", "integral"),
    [
        ("float32", -math.inf, math.inf, False),
        ("float16", -65504, 65504, False),
        ("uint8", 0, 255, True),
        ("int8", -128, 127, True),
    ],
)
def test_embed_encodings(
    client: TestClient, encoding: str, lo: float, hi: float, integral: bool
) -> None:
    resp = client.post("/embed", json={"inputs": _inputs(3).tolist(), "encoding": encoding})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["encoding"] == encoding
    codes = np.asarray(body["embeddings"])
    assert codes.shape == (3, LATENT)
    assert ((codes >= lo) & (codes <= hi)).all()
    if integral:
        assert all(isinstance(v, int) for row in body["embeddings"] for v in row)
    if encoding == "float16":
        assert np.array_equal(codes, codes.astype(np.float16).astype(np.float64))


def test_reconstruct(client: TestClient) -> None:
    resp = client.post("/reconstruct", json={"inputs": _inputs(2).tolist()})
    assert resp.status_code == 200, resp.text
    out = np.asarray(resp.json()["outputs"])
    assert out.shape == (2, *SHAPE)
    assert ((out > 0) & (out < 1)).all()  # the toy decoder ends in a sigmoid


def test_generate_is_deterministic_and_honours_fixed(client: TestClient) -> None:
    body = {"n": 4, "seed": 7, "fixed": {"1": 0.5}}
    first = client.post("/generate", json=body)
    second = client.post("/generate", json=body)
    assert first.status_code == 200, first.text
    assert first.json() == second.json()
    samples = np.asarray(first.json()["samples"])
    latents = np.asarray(first.json()["latents"])
    assert samples.shape == (4, *SHAPE)
    np.testing.assert_allclose(latents[:, 1], 0.5)
    other = client.post("/generate", json={"n": 4, "seed": 8}).json()
    assert other["samples"] != first.json()["samples"]


def test_generate_png_decodes(client: TestClient) -> None:
    from PIL import Image

    resp = client.post("/generate", json={"n": 2, "seed": 0, "output": "png"})
    assert resp.status_code == 200, resp.text
    for item in resp.json()["samples"]:
        with Image.open(io.BytesIO(base64.b64decode(item))) as img:
            assert img.format == "PNG"
            assert img.size == (4, 4)


def test_info_get_and_post(client: TestClient) -> None:
    for resp in (client.get("/info"), client.post("/info")):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["name"] == "toy"
        assert body["latent_dim"] == LATENT


def test_drift_warms_up_then_reports_ok(client: TestClient) -> None:
    first = client.get("/drift").json()
    assert first["state"] == "warming_up"
    assert client.post("/drift").json()["state"] == "warming_up"
    window = first["window"]
    # Inputs whose embeddings follow the prior (like the reference): x = z @ pinv(W_enc).
    w_enc, _ = toy_weights(SHAPE, LATENT)
    z = np.random.default_rng(3).standard_normal((2 * window, LATENT))
    x = (z @ np.linalg.pinv(w_enc)).reshape(-1, *SHAPE)
    for chunk in np.array_split(x, 4):
        assert client.post("/embed", json={"inputs": chunk.tolist()}).status_code == 200
    deadline = time.monotonic() + 10
    report = client.get("/drift").json()
    while report["windows_evaluated"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        report = client.get("/drift").json()
    assert report["state"] == "ok", report
    assert report["mmd2"] is not None and report["mmd2_threshold"] > 0


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics text: (sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_health_metrics_and_docs(client: TestClient, bundle_dir: Path) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    before = _samples(client.get("/metrics").text)
    client.post("/embed", json={"inputs": _inputs(2).tolist()})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "sculpt_embeddings_served_total" in metrics.text
    assert "sculpt_drift_alert" in metrics.text
    # The core's own series (issue 14): one encoder call of the request's 2 rows, the bundle
    # served, the drift monitor's last evaluation (its start, before a full window).
    after = _samples(metrics.text)
    encoder = (("model", "encoder"),)
    for name, delta in (
        ("sculpt_inference_duration_seconds_count", 1),
        ("sculpt_batch_rows_count", 1),
        ("sculpt_batch_rows_sum", 2),
    ):
        assert after[(name, encoder)] - before.get((name, encoder), 0) == delta, name
    info = (("digest", bundle_digest(bundle_dir)), ("name", "toy"), ("version", "v1"))
    assert after[("sculpt_model_info", info)] == 1
    stamp = after[("sculpt_drift_last_evaluation_timestamp_seconds", (("worker", "0"),))]
    assert stamp <= time.time()
    spec = client.get("/docs.json").json()
    assert spec["openapi"].startswith("3.")
    assert set(API_ROUTES) <= set(spec["paths"])


def test_service_config_threads_blas_and_json_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    from sculptserve.serving.http.service import DEFAULT_API_THREADS
    from sculptserve.serving.settings import load_settings

    env_api_threads = "SCULPT_API_THREADS"
    # Several sync-API threads, or concurrent requests could never meet in a batch.
    assert load_settings({}).api_threads == DEFAULT_API_THREADS > 1
    assert load_settings({env_api_threads: " 4 "}).api_threads == 4
    for bad in ("0", "many"):
        with pytest.raises(ValueError, match=env_api_threads):
            load_settings({env_api_threads: bad})
    monkeypatch.delenv(env_api_threads, raising=False)
    assert SculptService.config["threads"] == DEFAULT_API_THREADS
    envs = {e.name: (e.value, e.stage) for e in SculptService.envs}
    assert envs["OPENBLAS_NUM_THREADS"] == ("1", "runtime")
    for method in SculptService.apis.values():  # declared, not rebuilt from a schema per call
        assert method.output_spec.media_type == "application/json"


def test_concurrent_embeds_are_batched_and_each_gets_its_own(
    monkeypatch: pytest.MonkeyPatch, bundle_dir: Path
) -> None:
    w_enc, _ = toy_weights(SHAPE, LATENT)
    inputs = [_inputs(n, seed=n) for n in range(1, 13)]
    with _client(monkeypatch, bundle_dir, SCULPT_MICROBATCH="on") as client:

        def embed(x: np.ndarray) -> np.ndarray:
            resp = client.post("/embed", json={"inputs": [_raw(row) for row in x]})
            assert resp.status_code == 200, resp.text
            return np.asarray(resp.json()["embeddings"], dtype=np.float32)

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(embed, inputs))
        batching = client.get("/info").json()["batching"]
    for x, z in zip(inputs, results, strict=True):
        np.testing.assert_allclose(z, toy_encode(x, w_enc), atol=1e-5)
    assert batching["enabled"] is True
    assert (batching["requests"], batching["rows"]) == (len(inputs), sum(map(len, inputs)))


def test_batching_is_off_by_default(client: TestClient) -> None:
    assert client.get("/info").json()["batching"] == {
        "enabled": False,
        "max_batch_size": 64,
        "max_latency_ms": 2.0,
    }


def test_tabular_model(monkeypatch: pytest.MonkeyPatch, tabular_dir: Path) -> None:
    with _client(monkeypatch, tabular_dir) as c:
        resp = c.post("/embed", json={"inputs": [[0.1, 0.2, 0.3, 0.4, 0.5]]})
        assert resp.status_code == 200, resp.text
        assert np.asarray(resp.json()["embeddings"]).shape == (1, 2)
        png = c.post("/generate", json={"n": 1, "output": "png"})
        assert png.status_code == 400 and "needs an image model" in _error(png)


# -- client errors: every one a 4xx that says what was wrong ----------------------------------

BAD_REQUESTS = [
    ("/embed", {"inputs": [[[0.0] * 3] * 4]}, "shape"),
    ("/embed", {"inputs": [[["a"] * 4] * 4]}, "valid number (got 'a')"),
    ("/embed", {"inputs": [_raw(np.full(SHAPE, np.nan, dtype=np.float32))]}, "NaN"),
    ("/embed", {"inputs": ["%%% not base64 %%%"]}, "base64"),
    ("/embed", {"inputs": [base64.b64encode(b"not an image").decode()]}, "decode"),
    ("/embed", {"inputs": []}, "at least 1 item"),
    ("/embed", {"inputs": [[[0.0] * 4] * 4], "encoding": "bf16"}, "encoding"),
    ("/embed", {"inputs": "nope"}, "validation"),
    ("/embed", {}, "validation"),
    ("/reconstruct", {"inputs": [[1, 2]]}, "shape"),
    ("/reconstruct", {"inputs": []}, "at least 1 item"),
    ("/generate", {"n": 100000}, "n: Input should be less than or equal to 256"),
    ("/generate", {"n": 0}, "n: Input should be greater than or equal to 1"),
    ("/generate", {"n": -3}, "n: Input should be greater than or equal to 1"),
    ("/generate", {"n": 2, "fixed": {"9": 1.0}}, "fixed key '9'"),
    ("/generate", {"n": 2, "fixed": {"x": 1.0}}, "fixed key 'x'"),
    ("/generate", {"n": 2, "seed": -1}, "seed"),
    ("/generate", {"n": 2, "output": "gif"}, "output"),
    ("/generate", {"n": "many"}, "validation"),
]


@pytest.mark.parametrize(("route", "body", "reason"), BAD_REQUESTS)
def test_bad_input_is_a_readable_4xx(
    client: TestClient, route: str, body: dict[str, Any], reason: str
) -> None:
    resp = client.post(route, json=body)
    assert resp.status_code == 400, resp.text
    assert reason.lower() in _error(resp).lower()


def test_literal_nan_in_json_is_rejected(client: TestClient) -> None:
    rows = [[[float("nan")] * 4] * 4]
    text = json.dumps({"inputs": rows})  # Python writes the non-standard literal NaN
    assert "NaN" in text
    resp = client.post("/embed", content=text, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text


def test_huge_values_are_a_4xx(client: TestClient) -> None:
    x = np.full((1, *SHAPE), 3e38)
    for route in ("/embed", "/reconstruct"):
        resp = client.post(route, json={"inputs": x.tolist()})
        assert resp.status_code < 500, resp.text


def test_malformed_json_is_400(client: TestClient) -> None:
    for route in API_ROUTES[:3]:
        resp = client.post(route, content=b"{bad", headers={"content-type": "application/json"})
        assert resp.status_code == 400, resp.text
        assert "json" in _error(resp).lower()


@pytest.mark.parametrize("route", API_ROUTES[:3])
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "multipart/form-data; boundary=x", "multipart/form-data", None],
)
def test_json_routes_take_only_json(
    client: TestClient, route: str, content_type: str | None
) -> None:
    """Finding 3 (a malformed multipart body to a JSON route was a 500) and finding 9 (any
    Content-Type was parsed as JSON): a JSON route answers any other media type 415."""
    headers = {"content-type": content_type} if content_type else {}
    resp = client.post(route, content=b"{}", headers=headers)
    assert resp.status_code == 415, resp.text
    assert "application/json" in _error(resp)
    assert resp.json()["error_type"] == "unsupported_media_type"


def test_too_many_items(monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> None:
    with _client(monkeypatch, bundle_dir, SCULPT_REQUEST_MAX_ITEMS="4") as c:
        resp = c.post("/embed", json={"inputs": _inputs(5).tolist()})
        assert resp.status_code == 400
        assert "inputs: List should have at most 4 items" in _error(resp)


def test_body_limit(monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> None:
    with _client(monkeypatch, bundle_dir, SCULPT_REQUEST_MAX_BYTES="2000") as c:
        small = c.post("/embed", json={"inputs": _inputs(1).tolist()})
        assert small.status_code == 200, small.text
        big = json.dumps({"inputs": _inputs(20).tolist()}).encode()
        resp = c.post("/embed", content=big, headers={"content-type": "application/json"})
        assert resp.status_code == 413
        assert "limit" in resp.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            for i in range(0, len(big), 500):
                yield big[i : i + 500]

        resp = c.post("/embed", content=chunks(), headers={"content-type": "application/json"})
        assert resp.status_code == 413
        assert "limit" in resp.json()["error"]
        assert c.get("/livez").status_code == 200  # the server carries on


def test_api_key(monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> None:
    with _client(monkeypatch, bundle_dir, SCULPT_API_KEY="s3cret") as c:
        body = {"inputs": _inputs(1).tolist()}
        for route in API_ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                resp = c.post(route, json=body, headers=headers)
                assert resp.status_code == 401, (route, headers)
                assert "API key" in resp.json()["error"]
        assert c.get("/info").status_code == 401
        assert c.get("/drift").status_code == 401
        upload = [("files", ("a.png", b"\x89PNG", "image/png"))]
        assert c.post("/embed/files", files=upload).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert c.post("/embed", json=body, headers=good).status_code == 200
        assert c.get("/info", headers=good).status_code == 200
        for open_route in ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json"):
            assert c.get(open_route).status_code == 200, open_route


def test_serving_never_imports_torch(bundle_dir: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os, sys
        os.environ["SCULPT_BUNDLE"] = {str(bundle_dir)!r}
        from starlette.testclient import TestClient
        from sculptserve.serving.http.service import SculptService
        with TestClient(SculptService.to_asgi()) as c:
            r = c.post("/embed", json={{"inputs": [[[0.5] * 4] * 4]}})
            assert r.status_code == 200, r.text
        assert "torch" not in sys.modules, "torch was imported"
        print("no torch")
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no torch" in done.stdout
