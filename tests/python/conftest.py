"""Shared pytest configuration for the Python test layers (unit, integration, django).

* The tests run against the installed wheel: the session stops at once if ``pillowtop_rs`` is
  imported from the source tree (``python/``) or from anywhere but a site-packages directory.
* Tests marked ``integration`` (and every test under ``integration/`` and ``django/``, which are
  marked automatically) need the services of ``tests/services``. They skip when the ``TEST_*``
  addresses are unset, except when ``CI`` is set: then a missing service is an error.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import secrets
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_PACKAGE = REPO_ROOT / "python" / "pillowtop_rs"

# Service fixture name -> the environment variable that holds the service's address.
SERVICE_VARS = {
    "kafka_bootstrap": "TEST_KAFKA_BOOTSTRAP",
    "postgres_url": "TEST_POSTGRES_URL",
    "elasticsearch_url": "TEST_ELASTICSEARCH_URL",
}
INTEGRATION_DIRS = ("integration", "django")


def in_ci() -> bool:
    """True when ``CI`` is set to anything but an empty or false-like value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_sessionstart(session: pytest.Session) -> None:
    spec = importlib.util.find_spec("pillowtop_rs")
    if spec is None or spec.origin is None:
        raise pytest.UsageError(
            "pillowtop_rs is not installed: build the wheel with maturin and pip install it"
        )
    location = Path(spec.origin).resolve().parent
    if location.is_relative_to(SOURCE_PACKAGE) or not any(
        part in ("site-packages", "dist-packages") for part in location.parts
    ):
        raise pytest.UsageError(
            f"pillowtop_rs would be imported from {location}, not from an installed wheel in "
            f"site-packages; the tests must run against the installed wheel (remove the source "
            f"tree from PYTHONPATH and any extension built in place by `maturin develop`)"
        )
    try:
        importlib.import_module("pillowtop_rs._native")
    except ImportError as e:
        raise pytest.UsageError(f"the installed pillowtop_rs is broken: {e}") from e


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        path = Path(item.path).resolve()
        if path.is_relative_to(tests_dir):
            top = path.relative_to(tests_dir).parts[0]
            if top in INTEGRATION_DIRS and item.get_closest_marker("integration") is None:
                item.add_marker(pytest.mark.integration)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is None:
        return
    fixturenames: list[str] = list(getattr(item, "fixturenames", []))
    wanted = [var for name, var in SERVICE_VARS.items() if name in fixturenames]
    missing = [var for var in wanted or SERVICE_VARS.values() if not os.environ.get(var)]
    if not missing:
        return
    reason = (
        f"{', '.join(missing)} not set: start the services with tests/services/up "
        f"and source the env file it writes"
    )
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so a missing service is an error)", pytrace=False)
    pytest.skip(reason)


def _service_address(request: pytest.FixtureRequest, fixture: str) -> str:
    if request.node.get_closest_marker("integration") is None:
        pytest.fail(
            f"{request.node.nodeid} uses {fixture} but is not marked integration", pytrace=False
        )
    # pytest_runtest_setup has already skipped (or failed, in CI) when the variable is unset.
    return os.environ[SERVICE_VARS[fixture]]


@pytest.fixture
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """Kafka bootstrap servers (``TEST_KAFKA_BOOTSTRAP``)."""
    return _service_address(request, "kafka_bootstrap")


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """PostgreSQL connection URL (``TEST_POSTGRES_URL``)."""
    return _service_address(request, "postgres_url")


@pytest.fixture
def elasticsearch_url(request: pytest.FixtureRequest) -> str:
    """Search engine base URL (``TEST_ELASTICSEARCH_URL``)."""
    return _service_address(request, "elasticsearch_url")


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A fresh resource name, ``test_<testname>_<random>`` (topics, checkpoint ids, indices)."""
    name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    name = name.removeprefix("test_")[:40].strip("_")
    return f"test_{name}_{secrets.token_hex(4)}"
