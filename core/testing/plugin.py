"""An opt-in pytest plugin for running the conveyor contract suite against any server.

It is not registered as a ``pytest11`` entry point: enable it with ``-p conveyor.testing.plugin``
on the command line or ``pytest_plugins = ["conveyor.testing.plugin"]`` in your top-level
``conftest.py``. It adds two options, ``--conveyor-broker-url`` and ``--conveyor-backend-url``,
and two fixtures, ``conveyor_broker_url`` and ``conveyor_backend_url``, that return them and skip
the test when the option was not given.

A third-party driver author, whose package registers ``mydriver`` under the ``conveyor.brokers``
(and/or ``conveyor.backends``) entry point group, writes::

    import pytest
    from conveyor.testing import BrokerContract, ResultBackendContract

    class TestMyBroker(BrokerContract):
        @pytest.fixture
        def broker_url(self) -> str:
            return "mydriver://localhost:1234/0"

    class TestMyBackend(ResultBackendContract):
        @pytest.fixture
        def backend_url(self) -> str:
            return "mydriver://localhost:1234/1"

With this plugin enabled the URL fixtures may be left out and given at run time instead::

    pytest -p conveyor.testing.plugin --conveyor-broker-url=mydriver://host/0 tests/

Each test uses its own queue names and task ids, so one shared server serves the whole run.
A driver class not published through an entry point can still be tested by overriding the
``broker_factory`` (or ``backend_factory``) fixture with one that returns a callable building a
new, open instance; the default factories build from the URL through :mod:`conveyor.registry`.
Only some behaviour areas can be run by subclassing the area mixins (``BrokerLeaseContract``,
``BackendExpiryContract``, ...) instead of the full contracts.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--conveyor-broker-url`` and ``--conveyor-backend-url``."""
    group = parser.getgroup("conveyor", "conveyor driver contract suite")
    group.addoption("--conveyor-broker-url", default=None, metavar="URL",
                    help="broker URL for conveyor.testing.BrokerContract tests")
    group.addoption("--conveyor-backend-url", default=None, metavar="URL",
                    help="result backend URL for conveyor.testing.ResultBackendContract tests")


def _option(config: pytest.Config, name: str) -> str:
    value = config.getoption(name)
    if not value:
        pytest.skip(f"no --{name.replace('_', '-')} given")
    return str(value)


@pytest.fixture
def conveyor_broker_url(pytestconfig: pytest.Config) -> str:
    """The ``--conveyor-broker-url`` option; skips the test when it was not given."""
    return _option(pytestconfig, "conveyor_broker_url")


@pytest.fixture
def conveyor_backend_url(pytestconfig: pytest.Config) -> str:
    """The ``--conveyor-backend-url`` option; skips the test when it was not given."""
    return _option(pytestconfig, "conveyor_backend_url")
