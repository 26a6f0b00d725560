"""The contract suite can fail: broken drivers are caught by the test named for their bug."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

# A test module run by pytester: deliberately broken subclasses of the memory drivers, built
# through overridden factories (they are not registered under any URL scheme).
BROKEN_DRIVERS = textwrap.dedent('''
    import uuid
    from collections.abc import Callable

    import pytest

    from conveyor.backends.memory import MemoryResultBackend
    from conveyor.brokers.memory import MemoryBroker
    from conveyor.testing import BrokerContract, ResultBackendContract
    from conveyor.url import URL


    class LeaseIgnoringBroker(MemoryBroker):
        """Hands a reserved message out again at once, as if leases did not exist."""

        def reserve(self, queues, *, lease, wait=0.0, limit=1):
            got = super().reserve(queues, lease=lease, wait=wait, limit=limit)
            for reservation in got:
                super().nack(reservation)
            return got


    class OverwritingBackend(MemoryResultBackend):
        """Lets any write replace a terminal record."""

        def store(self, record, *, ttl):
            self.forget(record.task_id)
            return super().store(record, ttl=ttl)


    BROKER = {broker}
    BACKEND = {backend}


    class TestBroker(BrokerContract):
        @pytest.fixture
        def broker_factory(self) -> Callable[[], MemoryBroker]:
            url = URL(f"memory://{{uuid.uuid4().hex}}")
            return lambda: BROKER(url)


    class TestBackend(ResultBackendContract):
        @pytest.fixture
        def backend_factory(self) -> Callable[[], MemoryResultBackend]:
            url = URL(f"memory://{{uuid.uuid4().hex}}")
            return lambda: BACKEND(url)
''')


#: Contract tests, and the broken driver each one must catch.
CASES = {
    "TestBroker::test_reserved_message_is_not_delivered_twice_while_leased":
        "LeaseIgnoringBroker",
    "TestBroker::test_racing_consumers_sharing_one_broker_get_each_message_exactly_once":
        "LeaseIgnoringBroker",
    "TestBackend::test_first_terminal_write_wins": "OverwritingBackend",
    "TestBackend::test_one_of_racing_terminal_writers_sharing_a_backend_wins":
        "OverwritingBackend",
}


def _outcomes(pytester: pytest.Pytester, *, broker: str, backend: str) -> dict[str, str]:
    """Run the CASES tests of a module using the named drivers; return each test's outcome."""
    pytester.makepyfile(test_broken=BROKEN_DRIVERS.format(broker=broker, backend=backend))
    run = pytester.inline_run("-p", "no:cacheprovider", *(f"test_broken.py::{t}" for t in CASES))
    return {report.nodeid.removeprefix("test_broken.py::"): report.outcome
            for report in run.getreports("pytest_runtest_logreport") if report.when == "call"}


def test_contract_fails_drivers_with_the_bugs_it_checks(pytester: pytest.Pytester) -> None:
    outcomes = _outcomes(pytester, broker="LeaseIgnoringBroker", backend="OverwritingBackend")
    assert outcomes == dict.fromkeys(CASES, "failed")


def test_same_contract_tests_pass_the_correct_drivers(pytester: pytest.Pytester) -> None:
    outcomes = _outcomes(pytester, broker="MemoryBroker", backend="MemoryResultBackend")
    assert outcomes == dict.fromkeys(CASES, "passed")
