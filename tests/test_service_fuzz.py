"""Fuzz the REST service from its own OpenAPI spec: no request may produce a 5xx.

schemathesis generates requests (valid and invalid) for every operation in ``/docs.json`` and
checks ``not_a_server_error``. The app runs in-process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.bundle_factory import make_bundle
from tests.test_service import fresh_asgi_app


def _load_schema() -> Any:
    """Build the app over a factory bundle and load its spec (at import: parametrize needs it).

    schemathesis' ASGI client runs the app's lifespan around each call, so the service
    instance is created per call and reads $SCULPT_BUNDLE then; the fixture below sets it.
    """
    previous = os.environ.get("SCULPT_BUNDLE")
    os.environ["SCULPT_BUNDLE"] = str(make_bundle(Path(_TMP.name) / "bundle"))
    try:
        return schemathesis.openapi.from_asgi("/docs.json", fresh_asgi_app())
    finally:
        if previous is None:
            del os.environ["SCULPT_BUNDLE"]
        else:
            os.environ["SCULPT_BUNDLE"] = previous


# Lives as long as the module: the bundle must outlast collection.
_TMP = tempfile.TemporaryDirectory(prefix="sculpt-fuzz-")
schema = _load_schema()


@pytest.fixture(scope="module", autouse=True)
def _bundle_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCULPT_BUNDLE", str(Path(_TMP.name) / "bundle"))
        mp.delenv("SCULPT_API_KEY", raising=False)
        yield


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error])
