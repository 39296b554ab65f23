"""Shared fixtures: one test PKI per session, written by janustls.pki; the reactor thread."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import EVENTS, EventLog, TestPKI, make_test_pki, reactor_thread

#: A test that hangs fails after this long instead of stalling the run (pytest-timeout).
TEST_TIMEOUT = 180


def pytest_configure(config: pytest.Config) -> None:
    # Part of the default run; `-m "not packaging"` leaves out the fresh-virtualenv installs.
    config.addinivalue_line(
        "markers", "packaging: installs the checkout into fresh virtualenvs (slow, needs the package index)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def reactor():
    return reactor_thread()


@pytest.fixture
def events() -> EventLog:
    return EVENTS


@pytest.fixture
def procs(tmp_path: Path) -> Path:
    """An empty procedure library for one test."""
    d = tmp_path / "procs"
    d.mkdir()
    return d
