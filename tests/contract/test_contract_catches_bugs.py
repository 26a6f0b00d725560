"""The contract suite can fail: broken drivers are caught by the test named for their bug.

Each broken driver is a memory driver with one realistic bug planted (the kinds the issue's
mutation run found surviving); the contract test named beside it must fail on it and pass on
the correct driver.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

# A test module run by pytester: deliberately broken subclasses of the memory drivers, built
# through overridden factories (they are not registered under any URL scheme).
BROKEN_DRIVERS = textwrap.dedent('''
    import time
    import uuid
    from collections.abc import Callable
    from dataclasses import replace

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


    class StaleNackBroker(MemoryBroker):
        """nack checks the message id only, not the delivery's token."""

        def nack(self, reservation, *, delay=0.0):
            with self._store.cond:
                q = self._store.queue(reservation.queue)
                entry = q.reserved.pop(reservation.message_id, None)
                if entry is not None:
                    q.ready.appendleft(entry[1])


    class StaleDeadLetterBroker(MemoryBroker):
        """dead_letter takes the message from whoever holds it (the old memory driver)."""

        def dead_letter(self, reservation, *, reason):
            with self._store.cond:
                q = self._store.queue(reservation.queue)
                q.reserved.pop(reservation.message_id, None)
                from conveyor.broker import DeadLetter
                q.dead[reservation.message_id] = DeadLetter(
                    reservation.queue, reservation.message_id, reservation.body, reason,
                    time.time())


    class LapsedPurgeBroker(MemoryBroker):
        """purge leaves messages whose lease lapsed (they still look reserved)."""

        def purge(self, queue):
            with self._store.cond:
                q = self._store.queue(queue)
                count = len(q.ready) + len(q.delayed)
                q.ready.clear()
                q.delayed.clear()
                return count


    class SortedQueuesBroker(MemoryBroker):
        """Serves several queues in name order instead of the order given."""

        def reserve(self, queues, *, lease, wait=0.0, limit=1):
            return super().reserve(sorted(queues), lease=lease, wait=wait, limit=limit)


    class PrefixPurgeBroker(MemoryBroker):
        """purge(q) also purges every queue whose name starts with q (a KEYS q* bug)."""

        def purge(self, queue):
            with self._store.cond:
                names = [n for n in self._store.queues if n.startswith(queue)]
            return sum(super(PrefixPurgeBroker, self).purge(n) for n in names)


    class CaseFoldingBroker(MemoryBroker):
        """Queue names compared without case (a case-insensitive collation)."""

        def enqueue_many(self, queue, messages, *, delay=0.0, priority=0):
            return super().enqueue_many(queue.lower(), messages, delay=delay, priority=priority)

        def reserve(self, queues, *, lease, wait=0.0, limit=1):
            got = super().reserve([q.lower() for q in queues], lease=lease, wait=wait,
                                  limit=limit)
            by_lower = dict((q.lower(), q) for q in queues)
            return [replace(r, queue=by_lower[r.queue]) for r in got]

        def _held(self, r):
            return super()._held(replace(r, queue=r.queue.lower()))

        def ack(self, reservation):
            super().ack(replace(reservation, queue=reservation.queue.lower()))

        def dead_letter(self, reservation, *, reason):
            super().dead_letter(replace(reservation, queue=reservation.queue.lower()),
                                reason=reason)

        def dead_letters(self, queue, *, limit=100):
            return super().dead_letters(queue.lower(), limit=limit)


    class OverwritingBackend(MemoryResultBackend):
        """Lets any write replace a terminal record."""

        def store(self, record, *, ttl):
            self.forget(record.task_id)
            return super().store(record, ttl=ttl)


    class MillisecondTTLBackend(MemoryResultBackend):
        """Reads the ttl as milliseconds."""

        def store(self, record, *, ttl):
            return super().store(record, ttl=None if ttl is None else ttl / 1000)


    class FirstExpiryKeptBackend(MemoryResultBackend):
        """A rewrite keeps the expiry of the first write (HSET without EXPIRE)."""

        def store(self, record, *, ttl):
            with self._store.cond:
                found = self._store.records.get(record.task_id)
                if not super().store(record, ttl=ttl):
                    return False
                if found is not None:
                    self._store.records[record.task_id] = (record, found[1])
                return True


    class RefusedWriteRefreshesBackend(MemoryResultBackend):
        """A refused write still pushes the expiry out (EXPIRE sent regardless)."""

        def store(self, record, *, ttl):
            with self._store.cond:
                written = super().store(record, ttl=ttl)
                found = self._store.records.get(record.task_id)
                if not written and found is not None:
                    expires = None if ttl is None else time.time() + ttl
                    self._store.records[record.task_id] = (found[0], expires)
                return written


    class GapDroppingBackend(MemoryResultBackend):
        """get_many stops at the first missing id (a zip over a shortened list)."""

        def get_many(self, task_ids):
            found = dict()
            for task_id in task_ids:
                record = self.get(task_id)
                if record is None:
                    break
                found[task_id] = record
            return found


    class UncountedPurgeBackend(MemoryResultBackend):
        """Declares no native expiry but purge_expired always returns 0."""

        capabilities = replace(MemoryResultBackend.capabilities, native_expiry=False)

        def purge_expired(self):
            super().purge_expired()
            return 0


    class CachingBackend(MemoryResultBackend):
        """Each instance caches what it read: a forget through another goes unseen."""

        def __init__(self, url, **options):
            super().__init__(url, **options)
            self._cache = dict()

        def get(self, task_id):
            if task_id not in self._cache:
                self._cache[task_id] = super().get(task_id)
            return self._cache[task_id]

        def store(self, record, *, ttl):
            self._cache.pop(record.task_id, None)
            return super().store(record, ttl=ttl)


    class CaseFoldingBackend(MemoryResultBackend):
        """Task ids compared without case."""

        def store(self, record, *, ttl):
            return super().store(replace(record, task_id=record.task_id.lower()), ttl=ttl)

        def get(self, task_id):
            found = super().get(task_id.lower())
            return None if found is None else replace(found, task_id=task_id)

        def forget(self, task_id):
            super().forget(task_id.lower())


    class CoordinationPurgingBackend(MemoryResultBackend):
        """purge_expired also drops live join sets and entries (an `and` read as `or`)."""

        def purge_expired(self):
            with self._store.cond:
                self._store.sets.clear()
                self._store.entries.clear()
            return super().purge_expired()


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
    "TestBroker::test_stale_nack_leaves_the_new_holder_alone": "StaleNackBroker",
    "TestBroker::test_stale_receipts_from_another_instance_leave_the_new_holder_alone":
        "StaleNackBroker",
    "TestBroker::test_stale_dead_letter_leaves_the_new_holder_alone": "StaleDeadLetterBroker",
    "TestBroker::test_purge_deletes_a_message_whose_lease_lapsed": "LapsedPurgeBroker",
    "TestBroker::test_several_queues_are_served_in_the_order_given": "SortedQueuesBroker",
    "TestBroker::test_purge_and_stats_stay_within_their_queue": "PrefixPurgeBroker",
    "TestBroker::test_queue_names_that_could_collide_are_kept_apart": "CaseFoldingBroker",
    "TestBackend::test_first_terminal_write_wins": "OverwritingBackend",
    "TestBackend::test_one_of_racing_terminal_writers_sharing_a_backend_wins":
        "OverwritingBackend",
    "TestBackend::test_ttl_is_in_seconds_and_fractions_count": "MillisecondTTLBackend",
    "TestBackend::test_rewriting_a_record_sets_its_expiry_afresh": "FirstExpiryKeptBackend",
    "TestBackend::test_a_refused_write_leaves_the_expiry_alone": "RefusedWriteRefreshesBackend",
    "TestBackend::test_get_many_with_missing_ids_in_every_position": "GapDroppingBackend",
    "TestBackend::test_purge_expired_counts_the_records_it_deleted": "UncountedPurgeBackend",
    "TestBackend::test_forget_through_one_instance_is_seen_by_another": "CachingBackend",
    "TestBackend::test_task_ids_that_could_collide_are_kept_apart": "CaseFoldingBackend",
    "TestBackend::test_purge_expired_keeps_live_sets_and_entries": "CoordinationPurgingBackend",
}


def _outcomes(pytester: pytest.Pytester, tests: list[str], *, broker: str,
              backend: str) -> dict[str, str]:
    """Run ``tests`` of a module using the named drivers; return each test's outcome."""
    pytester.makepyfile(test_broken=BROKEN_DRIVERS.format(broker=broker, backend=backend))
    run = pytester.inline_run("-p", "no:cacheprovider", *(f"test_broken.py::{t}" for t in tests))
    return {report.nodeid.removeprefix("test_broken.py::"): report.outcome
            for report in run.getreports("pytest_runtest_logreport") if report.when == "call"}


@pytest.mark.parametrize("broken", sorted(set(CASES.values())))
def test_contract_fails_drivers_with_the_bugs_it_checks(
        pytester: pytest.Pytester, broken: str) -> None:
    tests = [t for t, driver in CASES.items() if driver == broken]
    pair = ({"broker": broken, "backend": "MemoryResultBackend"} if broken.endswith("Broker")
            else {"broker": "MemoryBroker", "backend": broken})
    assert _outcomes(pytester, tests, **pair) == dict.fromkeys(tests, "failed")


def test_same_contract_tests_pass_the_correct_drivers(pytester: pytest.Pytester) -> None:
    outcomes = _outcomes(pytester, list(CASES), broker="MemoryBroker",
                         backend="MemoryResultBackend")
    assert outcomes == dict.fromkeys(CASES, "passed")
