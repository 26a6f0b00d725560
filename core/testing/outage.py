"""The outage contract: a driver whose server is unreachable says so, quickly and clearly.

Every call raises :class:`~conveyor.exceptions.ConnectionLostError` (retryable: the worker
backs off and reconnects) within :data:`OUTAGE_BOUND` seconds, never hangs, never returns as
if it had worked, and never raises a client library's own exception. Building the driver may
already raise it (a driver that creates its schema at start); ``ping`` must.

The author provides ``unreachable_broker_url`` / ``unreachable_backend_url``: a URL of the
driver pointing at a server that does not answer (a closed port on 127.0.0.1, with whatever
connect-timeout option keeps the client quick). Without it the tests are skipped, naming the
fixture. In-process drivers (``shared_between_processes=False``) have no server to lose: for
them the tests are skipped as not applicable (see :data:`NOT_APPLICABLE`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from conveyor.backend import ResultBackend, StoredRecord
from conveyor.broker import Broker
from conveyor.exceptions import ConnectionLostError
from conveyor.registry import backend_from_url, broker_from_url
from conveyor.testing.backend import BackendFixtures
from conveyor.testing.broker import BrokerFixtures

#: A driver: a broker or a result backend.
D = TypeVar("D", Broker, ResultBackend)

#: Longest a call on an unreachable server may take to raise (seconds).
OUTAGE_BOUND = 20.0
#: The start of a skip reason for a test that cannot apply to a driver by what it declares.
NOT_APPLICABLE = "not applicable:"


def unreachable_url(url: str, port: int, scratch: Path) -> str:
    """``url`` with its server swapped for ``127.0.0.1:port`` (where nothing should listen):
    the host of the URL's authority, or an ``endpoint_url`` query option (``sqs://``,
    ``s3://``); for SQLite, ``scratch`` (a directory, which cannot be opened as a database).
    MongoDB URLs get ``serverSelectionTimeoutMS=1000`` so that each call fails in a second."""
    scheme = url.split("://", 1)[0]
    if scheme.startswith("sqlite"):
        return f"sqlite:///{scratch}"
    if "endpoint_url=" in url:
        return re.sub(r"endpoint_url=[^&]*", f"endpoint_url=http://127.0.0.1:{port}", url)
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not (scheme.startswith("mongodb") and k == "serverSelectionTimeoutMS")]
    if scheme.startswith("mongodb"):
        query.append(("serverSelectionTimeoutMS", "1000"))
    netloc = re.sub(r"(^|@)[^@]*$", lambda m: f"{m.group(1)}127.0.0.1:{port}", parts.netloc)
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/:")))


def _outcome(call: Callable[[], Any]) -> BaseException | None:
    """Run ``call`` in a thread; return what it raised (None if it returned). Fails the test
    when the call is still running after :data:`OUTAGE_BOUND` seconds."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller
            raised.append(exc)
        else:
            raised.append(None)

    thread = threading.Thread(target=run, daemon=True, name="conveyor-outage-call")
    thread.start()
    thread.join(OUTAGE_BOUND)
    if thread.is_alive():
        pytest.fail(f"a call on an unreachable server still blocked after {OUTAGE_BOUND}s; "
                    "give the client a connect timeout", pytrace=False)
    return raised[0]


def _assert_connection_lost(what: str, call: Callable[[], Any]) -> None:
    exc = _outcome(call)
    assert exc is not None, f"{what} on an unreachable server returned as if it had worked"
    assert isinstance(exc, ConnectionLostError), (
        f"{what} on an unreachable server raised {type(exc).__module__}."
        f"{type(exc).__qualname__}: {exc}; translate it into ConnectionLostError")
    assert exc.retryable is True


def _dead_url(request: pytest.FixtureRequest, fixture: str, in_process: bool) -> str:
    if in_process:
        pytest.skip(f"{NOT_APPLICABLE} an in-process driver (shared_between_processes=False) "
                    "has no server to lose")
    try:
        return str(request.getfixturevalue(fixture))
    except pytest.FixtureLookupError:
        pytest.skip(f"define an `{fixture}` fixture returning a URL of the driver pointing at "
                    "a closed port, to test its error translation")


def _built_dead(build: Callable[[str], D], url: str) -> Iterator[D | None]:
    """Yield the driver built from ``url`` and close it afterwards; yield None when building
    it already raised ConnectionLostError (refusing to start is a right answer too: the
    tests then have nothing to call). Any other error at build time fails the test."""
    built: list[D] = []
    exc = _outcome(lambda: built.append(build(url)))
    if exc is not None:
        assert isinstance(exc, ConnectionLostError), (
            f"building the driver for an unreachable server raised "
            f"{type(exc).__qualname__}: {exc}; raise ConnectionLostError or connect lazily")
        yield None
        return
    yield built[0]
    _outcome(built[0].close)


class BrokerOutageContract(BrokerFixtures):
    """ping, enqueue, reserve, stats and purge on an unreachable broker raise
    ConnectionLostError, promptly."""

    @pytest.fixture
    def dead_broker(self, request: pytest.FixtureRequest,
                    broker: Broker) -> Iterator[Broker | None]:
        """The driver built from ``unreachable_broker_url`` (skips, naming it, without one);
        None when building it already raised ConnectionLostError."""
        url = _dead_url(request, "unreachable_broker_url",
                        not broker.capabilities.shared_between_processes)
        yield from _built_dead(broker_from_url, url)

    def test_ping_raises_connection_lost_when_the_server_is_unreachable(
            self, dead_broker: Broker | None) -> None:
        if dead_broker is None:
            return
        _assert_connection_lost("ping()", dead_broker.ping)

    def test_calls_raise_connection_lost_when_the_server_is_unreachable(
            self, dead_broker: Broker | None) -> None:
        if dead_broker is None:
            return
        queue = "contract-unreachable"
        _assert_connection_lost("enqueue()", lambda: dead_broker.enqueue(queue, b"x"))
        _assert_connection_lost("reserve()", lambda: dead_broker.reserve([queue], lease=5.0))
        _assert_connection_lost("stats()", lambda: dead_broker.stats(queue))
        _assert_connection_lost("purge()", lambda: dead_broker.purge(queue))

    def test_blocking_reserve_raises_instead_of_waiting_out_its_wait(
            self, dead_broker: Broker | None) -> None:
        if dead_broker is None:
            return
        _assert_connection_lost("reserve(wait=...)", lambda: dead_broker.reserve(
            ["contract-unreachable"], lease=5.0, wait=OUTAGE_BOUND * 3))


class BackendOutageContract(BackendFixtures):
    """ping, store, get, get_many and forget on an unreachable backend raise
    ConnectionLostError, promptly."""

    @pytest.fixture
    def dead_backend(self, request: pytest.FixtureRequest,
                     backend: ResultBackend) -> Iterator[ResultBackend | None]:
        """The driver built from ``unreachable_backend_url`` (skips, naming it, without one);
        None when building it already raised ConnectionLostError."""
        url = _dead_url(request, "unreachable_backend_url",
                        not backend.capabilities.shared_between_processes)
        yield from _built_dead(backend_from_url, url)

    def test_ping_raises_connection_lost_when_the_server_is_unreachable(
            self, dead_backend: ResultBackend | None) -> None:
        if dead_backend is None:
            return
        _assert_connection_lost("ping()", dead_backend.ping)

    def test_calls_raise_connection_lost_when_the_server_is_unreachable(
            self, dead_backend: ResultBackend | None) -> None:
        if dead_backend is None:
            return
        task_id = "contract-unreachable"
        _assert_connection_lost("store()", lambda: dead_backend.store(
            StoredRecord(task_id, "SUCCESS", b"x"), ttl=None))
        _assert_connection_lost("get()", lambda: dead_backend.get(task_id))
        _assert_connection_lost("get_many()", lambda: dead_backend.get_many([task_id]))
        _assert_connection_lost("forget()", lambda: dead_backend.forget(task_id))
