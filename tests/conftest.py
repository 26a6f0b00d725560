"""Test-wide fixtures (the throwaway server fixtures of every driver family) and the rule
that under CI nothing is skipped: a skip there is reported as a failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import in_ci

pytest_plugins = ["tests.servers.redis", "tests.servers.postgres", "tests.servers.mysql"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (CI must run every test): {report.longrepr}"
