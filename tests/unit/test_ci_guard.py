"""Under CI a skipped test fails the run (checked in a child pytest)."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]


def test_a_skip_fails_under_ci(pytester, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401")
    pytester.makepyfile("import pytest\n\ndef test_skips():\n    pytest.skip('no server')\n")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the child imports tests.conftest
    monkeypatch.setenv("CI", "true")
    pytester.runpytest_subprocess().assert_outcomes(failed=1)
    monkeypatch.setenv("CI", "")
    pytester.runpytest_subprocess().assert_outcomes(skipped=1)
