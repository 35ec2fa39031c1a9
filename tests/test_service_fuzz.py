"""Fuzz the REST service from its own OpenAPI document, with every schemathesis check.

schemathesis reads ``/docs.json`` and generates requests for every operation: schema-valid
ones (which must be accepted: ``positive_data_acceptance``), schema-breaking ones (which must
be rejected: ``negative_data_rejection``), boundary cases, wrong methods; each response must
be documented and match its schema (``status_code_conformance``, ``content_type_conformance``,
``response_schema_conformance``, ...) and no request may produce a 5xx. The app runs
in-process, over one lifespan.

Formats the schema declares but no generator can invent are taught here: ``image-base64``
items and ``image/png`` / ``image/jpeg`` file parts are real images of the model's size, and
``float32-base64`` is the bytes of finite float32 values. One tolerance, documented in the
contract: a schema-valid request may be a 400 ``invalid_input`` for what JSON Schema cannot
state. With the generators here (decodable images of the right size, finite raw bytes) that is
only finite values overflowing float32 inside the model (which values do depends on the
weights), so only a 400 whose message reports Inf/NaN or non-finite values is let through,
and those are counted.

``test_fuzz_*`` tally every response; ``test_fuzz_reaches_the_model`` then asserts that at
least 90% of the schema-valid POSTs to /embed, /reconstruct and /generate got a 2xx (the schema
is typed well enough to reach the model), and, in the thorough run, half of all generated
POSTs, schema-breaking ones included; it prints the fractions. The default run uses few
examples; ``-m slow`` runs many.
"""

from __future__ import annotations

import base64
import io
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.bundle_factory import make_bundle
from tests.test_service import fresh_asgi_app

SHAPE = (1, 4, 4)  # the factory bundle's input: 4x4 gray images
MODEL_ROUTES = ("/embed", "/reconstruct", "/generate")

# Lives as long as the module: the bundle must outlast collection.
_TMP = tempfile.TemporaryDirectory(prefix="sculpt-fuzz-")
_BUNDLE = make_bundle(Path(_TMP.name) / "bundle", input_shape=SHAPE)
# (run, method, path, generation mode, outcome) -> responses, filled by the fuzz tests
TALLY: Counter[tuple[str, str, str, str, str]] = Counter()


def _load() -> tuple[Any, Any]:
    """The app and its schema, at import (parametrize needs the schema). Fetching /docs.json
    starts the app's lifespan, whose service instance reads $SCULPT_BUNDLE (and the other
    settings): set for that, then restored."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCULPT_BUNDLE", str(_BUNDLE))
        mp.delenv("SCULPT_API_KEY", raising=False)
        app = fresh_asgi_app()
        return app, schemathesis.openapi.from_asgi("/docs.json", app)


# --- what the generators cannot invent: real images, finite float32 bytes ---------------------


@st.composite
def _image_bytes(draw: st.DrawFn, fmt: str | None = None) -> bytes:
    from PIL import Image

    pixels = draw(st.binary(min_size=16, max_size=16))
    fmt = fmt or draw(st.sampled_from(["PNG", "JPEG"]))
    buf = io.BytesIO()
    Image.frombytes("L", SHAPE[1:], pixels).save(buf, format=fmt)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


_finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
schemathesis.openapi.format(
    "image-base64", _image_bytes().map(lambda b: base64.b64encode(b).decode("ascii"))
)
schemathesis.openapi.format(
    "float32-base64",
    st.lists(_finite_f32, min_size=16, max_size=16).map(
        lambda v: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
    ),
)
schemathesis.openapi.media_type("image/png", _image_bytes("PNG"))
# /embed's .npy bodies: a batch of 1 to 4 finite float32 examples of the model's shape
schemathesis.openapi.media_type(
    "application/x-npy",
    st.integers(1, 4).flatmap(
        lambda n: st.lists(_finite_f32, min_size=16 * n, max_size=16 * n).map(
            lambda v: _npy(np.asarray(v, dtype="<f4").reshape(-1, *SHAPE))
        )
    ),
)
schemathesis.openapi.media_type("image/jpeg", _image_bytes("JPEG"))

APP, schema = _load()


def _error_type(response: Any) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_type") if isinstance(body, dict) else None


_OVERFLOW = re.compile(r"\b(Inf|-Inf|NaN|non-finite)\b")


def _overflowed(response: Any) -> bool:
    """A 400 invalid_input because finite values overflowed float32 in the model."""
    if response.status_code != 400 or _error_type(response) != "invalid_input":
        return False
    return _OVERFLOW.search(response.json()["error"]) is not None


def valid_data_is_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """``positive_data_acceptance``, except a float32 overflow inside the model."""
    if _overflowed(response):
        return None
    return positive_data_acceptance(ctx, response, case)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCULPT_BUNDLE", str(_BUNDLE))
        mp.delenv("SCULPT_API_KEY", raising=False)
        with asgi.get_client(APP) as c:
            yield c


def _fuzz(run: str, case: Any, client: Any) -> None:
    response = case.call(session=client)
    meta = case.meta
    mode = f"{meta.phase.name.value}/{meta.generation.mode.value}" if meta else "explicit"
    outcome = "overflow" if _overflowed(response) else f"{response.status_code // 100}xx"
    TALLY[(run, case.method.upper(), case.path, mode, outcome)] += 1
    case.validate_response(
        response,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_data_is_accepted],
        transport_kwargs={"session": client},
    )


_SETTINGS: dict[str, Any] = {"deadline": None, "suppress_health_check": list(HealthCheck)}


@schema.parametrize()
@settings(max_examples=15, **_SETTINGS)
def test_fuzz_quick(case: Any, client: Any) -> None:
    _fuzz("quick", case, client)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=1000, derandomize=True, **_SETTINGS)
def test_fuzz_thorough(case: Any, client: Any) -> None:
    _fuzz("thorough", case, client)


@pytest.mark.parametrize("run", ["quick", pytest.param("thorough", marks=pytest.mark.slow)])
def test_fuzz_reaches_the_model(run: str) -> None:
    """Runs after the fuzz tests above (file order) and reads their tally.

    Schema-valid ("positive") POSTs must reach the model: at least 90% answered 2xx (the rest
    are float32 overflows). Over all generated POSTs, negative ones included, the share of 2xx
    depends on schemathesis' mix: the quick run is mostly its fixed set of coverage-phase
    negatives; the thorough run (derandomized, so the share is reproducible) must reach half.
    """
    tally = {k[1:]: n for k, n in TALLY.items() if k[0] == run}
    posts = {k: n for k, n in tally.items() if k[0] == "POST" and k[1] in MODEL_ROUTES}
    if not posts:
        pytest.skip(f"test_fuzz_{run} did not run in this session")
    total = sum(posts.values())
    ok = sum(n for k, n in posts.items() if k[3] == "2xx")
    positive = sum(n for k, n in posts.items() if k[2].endswith("/positive"))
    positive_ok = sum(n for k, n in posts.items() if k[2].endswith("/positive") and k[3] == "2xx")
    routes = ", ".join(MODEL_ROUTES)
    lines = [
        f"{run}: 2xx for {ok} of {total} generated POSTs to {routes} ({ok / total:.1%}); "
        f"for {positive_ok} of {positive} schema-valid ones ({positive_ok / positive:.1%})"
    ]
    for route in MODEL_ROUTES:
        for mode in sorted({k[2] for k in posts if k[1] == route}):
            sent = sum(n for k, n in posts.items() if k[1:3] == (route, mode))
            got = posts.get(("POST", route, mode, "2xx"), 0)
            over = posts.get(("POST", route, mode, "overflow"), 0)
            lines.append(f"  {route} {mode}: {got} of {sent} 2xx, {over} overflowed float32")
    report = "\n".join(lines)
    print(report)
    assert not any(k[3] == "5xx" for k in tally), tally
    assert positive_ok >= 0.9 * positive, report
    if run == "thorough":
        assert ok >= total / 2, report
