"""Test-wide fixtures (the throwaway server fixtures of every driver family) and the rule
that under CI nothing is skipped: a skip there is reported as a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.servers import in_ci

pytest_plugins = ["tests.servers.redis", "tests.servers.postgres", "tests.servers.mysql",
                  "tests.servers.mongo", "tests.servers.moto"]


def _drop_conveyor_settings_from_the_environment() -> None:
    # The environment beats what code sets (as in Celery): a CONVEYOR_BROKER_URL exported in
    # a developer's shell would point every test's app at that server.
    from conveyor.config import environment_variables

    for var in environment_variables():
        os.environ.pop(var, None)


_drop_conveyor_settings_from_the_environment()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (CI must run every test): {report.longrepr}"
