"""The opt-in plugin gives the contract suite its URLs from the command line."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

URL_FROM_COMMAND_LINE = """
from conveyor.testing import BackendStoreGetContract, BrokerAdminContract


class TestBroker(BrokerAdminContract):
    pass


class TestBackend(BackendStoreGetContract):
    pass
"""


def test_plugin_options_supply_the_urls(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cli=URL_FROM_COMMAND_LINE)
    result = pytester.runpytest_inprocess(
        "-p", "conveyor.testing.plugin", "--conveyor-broker-url=memory://plugin-test",
        "--conveyor-backend-url=memory://plugin-test", "-k", "ping")
    result.assert_outcomes(passed=2)


def test_plugin_skips_when_no_url_is_given(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cli=URL_FROM_COMMAND_LINE)
    result = pytester.runpytest_inprocess("-p", "conveyor.testing.plugin", "-k", "ping", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no --conveyor-broker-url given*"])


def test_contract_without_url_or_plugin_fails_saying_what_to_define(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cli=URL_FROM_COMMAND_LINE)
    result = pytester.runpytest_inprocess("-k", "ping")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*define a `broker_url` fixture*"])
