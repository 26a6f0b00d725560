"""The result backend contract, continued: the edges where real drivers break.

Task ids built to collide, TTLs (their unit, and which write sets them), ``get_many`` with
gaps, ``finished_many`` (the terminal records of some ids: the worker's pick-up check),
``purge_expired``'s count, and coherence between two driver instances on one store.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from conveyor.backend import ResultBackend, StoredRecord
from conveyor.ids import MAX_TASK_ID
from conveyor.testing.backend import EXPIRY_SLACK, SHORT_TTL, BackendFixtures
from conveyor.testing.identifiers import long_pair, variants


def _record(task_id: str, state: str, data: bytes = b"") -> StoredRecord:
    return StoredRecord(task_id, state, data or f"{state}:{task_id}".encode())


class BackendIdentifierContract(BackendFixtures):
    """Every task id the core accepts is kept exactly and apart from every other."""

    @pytest.fixture
    def named_ids(self, backend: ResultBackend) -> Iterator[Callable[[str], str]]:
        """Registers task ids of a test's own choosing; forgets them at teardown."""
        ids: list[str] = []

        def register(task_id: str) -> str:
            ids.append(task_id)
            return task_id

        yield register
        for task_id in ids:
            backend.forget(task_id)

    def _ids(self, named_ids: Callable[[str], str]) -> list[str]:
        base = f"contract-{uuid.uuid4().hex[:12]}"
        return [named_ids(i) for i in variants(base) + list(long_pair(base, MAX_TASK_ID))]

    def test_task_ids_that_could_collide_are_kept_apart(
            self, backend: ResultBackend, named_ids: Callable[[str], str]) -> None:
        ids = self._ids(named_ids)
        for task_id in ids:
            assert backend.store(_record(task_id, "SUCCESS"), ttl=None) is True, (
                f"the first terminal write of {task_id!r} was refused: another id took it")
        for task_id in ids:
            assert backend.get(task_id) == _record(task_id, "SUCCESS"), (
                f"{task_id!r} read back another record")
        assert backend.get_many(ids) == {i: _record(i, "SUCCESS") for i in ids}

    def test_finished_many_keeps_look_alike_ids_apart(
            self, backend: ResultBackend, named_ids: Callable[[str], str]) -> None:
        ids = self._ids(named_ids)
        done, running = ids[0::2], ids[1::2]
        for task_id in done:
            backend.store(_record(task_id, "SUCCESS"), ttl=None)
        for task_id in running:
            backend.store(_record(task_id, "STARTED"), ttl=None)
        got = backend.finished_many(ids)
        assert got == {i: _record(i, "SUCCESS") for i in done}, (
            "finished_many mixed up ids that differ only in case, padding, escaping or "
            f"their last character: asked for {ids!r}")

    def test_forget_of_one_id_leaves_its_look_alikes(
            self, backend: ResultBackend, named_ids: Callable[[str], str]) -> None:
        ids = self._ids(named_ids)
        for task_id in ids:
            backend.store(_record(task_id, "STARTED"), ttl=None)
        gone, kept = ids[0], ids[1:]
        backend.forget(gone)
        assert backend.get(gone) is None
        assert backend.get_many(kept) == {i: _record(i, "STARTED") for i in kept}


class BackendTTLContract(BackendFixtures):
    """A ttl is in seconds, fractions included; the latest successful write sets it, and a
    refused write changes nothing, expiry included."""

    def test_ttl_is_in_seconds_and_fractions_count(
            self, backend: ResultBackend, task_id: str) -> None:
        ttl = 2 * SHORT_TTL + 0.5
        stored_at = time.monotonic()
        backend.store(_record(task_id, "SUCCESS"), ttl=ttl)
        time.sleep(max(0.0, stored_at + SHORT_TTL + 0.2 - time.monotonic()))
        assert backend.get(task_id) == _record(task_id, "SUCCESS"), (
            f"a record stored with ttl={ttl} was gone after {SHORT_TTL + 0.2}s")
        time.sleep(max(0.0, stored_at + ttl + EXPIRY_SLACK - time.monotonic()))
        assert backend.get(task_id) is None, f"a record stored with ttl={ttl} outlived it"

    def test_store_many_keeps_the_ttl_in_seconds_too(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        ids = [new_task_id(), new_task_id()]
        lasting, forever = new_task_id(), new_task_id()
        stored_at = time.monotonic()
        assert backend.store_many([_record(i, "SUCCESS") for i in ids],
                                  ttl=SHORT_TTL) == [True, True]
        backend.store_many([_record(lasting, "SUCCESS")], ttl=3600.0)
        backend.store_many([_record(forever, "SUCCESS")], ttl=None)
        time.sleep(max(0.0, stored_at + 0.2 - time.monotonic()))
        assert backend.get_many(ids) == {i: _record(i, "SUCCESS") for i in ids}, (
            f"records stored by store_many with ttl={SHORT_TTL} were gone at once")
        time.sleep(max(0.0, stored_at + SHORT_TTL + EXPIRY_SLACK - time.monotonic()))
        assert backend.get_many(ids) == {}, (
            f"records stored by store_many with ttl={SHORT_TTL} outlived it")
        assert backend.get(lasting) == _record(lasting, "SUCCESS")
        assert backend.get(forever) == _record(forever, "SUCCESS")

    def test_finished_many_leaves_out_an_expired_terminal_record(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        expired, lasting = new_task_id(), new_task_id()
        backend.store(_record(expired, "SUCCESS"), ttl=SHORT_TTL)
        backend.store(_record(lasting, "FAILURE"), ttl=3600.0)
        assert backend.finished_many([expired, lasting]) == {
            expired: _record(expired, "SUCCESS"), lasting: _record(lasting, "FAILURE")}
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert backend.finished_many([expired, lasting]) == {
            lasting: _record(lasting, "FAILURE")}, (
            f"finished_many returned a terminal record stored with ttl={SHORT_TTL} after it "
            "expired (the worker would ack a new run of a reused id without running it)")

    def test_wait_does_not_return_a_record_that_expired_before_it_began(
            self, backend: ResultBackend, task_id: str) -> None:
        # An earlier run of a reused id, long expired: only a new write may end the wait.
        backend.store(_record(task_id, "SUCCESS"), ttl=SHORT_TTL)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert backend.get(task_id) is None
        assert backend.wait(task_id, timeout=0.5) is None, (
            "wait returned a record that had expired before the wait began")

    def test_rewriting_a_record_sets_its_expiry_afresh(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        longer, forever, shorter = new_task_id(), new_task_id(), new_task_id()
        backend.store(_record(longer, "STARTED"), ttl=SHORT_TTL)
        backend.store(_record(longer, "SUCCESS"), ttl=3600.0)
        backend.store(_record(forever, "STARTED"), ttl=SHORT_TTL)
        backend.store(_record(forever, "RETRY"), ttl=None)
        backend.store(_record(shorter, "STARTED"), ttl=None)
        backend.store(_record(shorter, "FAILURE"), ttl=SHORT_TTL)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert backend.get(longer) == _record(longer, "SUCCESS"), (
            "the rewrite with a longer ttl kept the first write's expiry")
        assert backend.get(forever) == _record(forever, "RETRY"), (
            "the rewrite with ttl=None kept the first write's expiry")
        assert backend.get(shorter) is None, (
            "the rewrite with a short ttl kept the first write's 'never'")

    def test_a_refused_write_leaves_the_expiry_alone(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        done, running = new_task_id(), new_task_id()
        backend.store(_record(done, "SUCCESS"), ttl=SHORT_TTL)
        assert backend.store(_record(done, "FAILURE"), ttl=None) is False
        backend.store(_record(running, "STARTED"), ttl=SHORT_TTL)
        assert backend.store(_record(running, "PENDING"), ttl=None) is False
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert backend.get(done) is None, "a refused terminal write extended the record"
        assert backend.get(running) is None, "a refused PENDING write extended the record"

    def test_purge_expired_counts_the_records_it_deleted(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        backend.purge_expired()  # what others left expiring need not be counted below
        expired = [new_task_id() for _ in range(3)]
        kept = [new_task_id() for _ in range(2)]
        for task_id in expired:
            backend.store(_record(task_id, "SUCCESS"), ttl=SHORT_TTL)
        backend.store(_record(kept[0], "SUCCESS"), ttl=3600.0)
        backend.store(_record(kept[1], "STARTED"), ttl=None)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        purged = backend.purge_expired()
        assert isinstance(purged, int)
        if backend.capabilities.native_expiry:
            assert purged >= 0  # the server may have dropped them already
        else:
            assert purged >= len(expired), f"purged {purged} of {len(expired)} expired"
        assert backend.get_many(expired + kept) == {
            kept[0]: _record(kept[0], "SUCCESS"), kept[1]: _record(kept[1], "STARTED")}
        # Nothing of ours is left to count.
        again = backend.purge_expired()
        assert isinstance(again, int)
        assert again >= 0


class BackendGetManyContract(BackendFixtures):
    """``get_many`` returns exactly the live records asked for, wherever the gaps fall;
    ``finished_many`` exactly the live terminal ones among them (SUCCESS, FAILURE, REVOKED),
    each whole."""

    def test_get_many_with_missing_ids_in_every_position(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        present = [new_task_id() for _ in range(2)]
        for task_id in present:
            backend.store(_record(task_id, "SUCCESS"), ttl=None)
        missing = [new_task_id() for _ in range(3)]
        want = {i: _record(i, "SUCCESS") for i in present}
        for ids in ([missing[0], *present], [*present, missing[0]],
                    [present[0], missing[0], present[1]],
                    [missing[0], present[0], missing[1], present[1], missing[2]],
                    [missing[0], missing[1]], [present[0], present[0], missing[0]]):
            got = backend.get_many(ids)
            assert got == {i: r for i, r in want.items() if i in ids}, f"get_many({ids})"

    def test_get_many_of_many_ids_returns_each_present_one(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        ids = [new_task_id() for _ in range(150)]  # past any batch size a driver chunks by
        present = ids[1::3]
        backend.store_many([_record(i, "SUCCESS") for i in present], ttl=None)
        assert backend.get_many(ids) == {i: _record(i, "SUCCESS") for i in present}
        assert backend.get_many(iter(ids)) == {i: _record(i, "SUCCESS") for i in present}


    def test_finished_many_returns_terminal_records_whole(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        succeeded, failed, revoked, big = (new_task_id() for _ in range(4))
        records = [StoredRecord(succeeded, "SUCCESS", bytes(range(256)) * 3),
                   StoredRecord(failed, "FAILURE", b"\x00\r\n\xff traceback"),
                   StoredRecord(revoked, "REVOKED", b"{}"),
                   StoredRecord(big, "SUCCESS", b"\xa5" * (100 * 1024 + 7))]
        for record in records:
            assert backend.store(record, ttl=None) is True
        got = backend.finished_many([succeeded, failed, revoked, big])
        assert got == {r.task_id: r for r in records}, (
            "finished_many must return every terminal record, REVOKED included, with its "
            "state and data exactly as stored")
        assert got == backend.get_many([succeeded, failed, revoked, big])
        assert all(type(r.data) is bytes for r in got.values()), "data must be bytes"

    def test_finished_many_leaves_out_progress_states_and_unknown_ids(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        pending, started, retry, unknown = (new_task_id() for _ in range(4))
        done, finished_later, kept = (new_task_id() for _ in range(3))
        backend.store(_record(pending, "PENDING"), ttl=None)
        backend.store(_record(started, "STARTED"), ttl=None)
        backend.store(_record(retry, "RETRY"), ttl=None)
        backend.store(_record(done, "SUCCESS"), ttl=None)
        backend.store(_record(finished_later, "STARTED"), ttl=None)
        backend.store(_record(finished_later, "FAILURE"), ttl=None)
        backend.store(_record(kept, "REVOKED"), ttl=None)
        assert backend.store(_record(kept, "STARTED", b"late"), ttl=None) is False
        want = {i: backend.get(i) for i in (done, finished_later, kept)}
        assert want == {done: _record(done, "SUCCESS"),
                        finished_later: _record(finished_later, "FAILURE"),
                        kept: _record(kept, "REVOKED")}
        progress = [pending, started, retry, unknown]
        for ids in ([*progress, done, finished_later, kept],
                    [done, *progress, kept, finished_later],
                    [pending, done, started, finished_later, retry, kept, unknown],
                    [done, done, started, started, kept]):
            got = backend.finished_many(ids)
            assert got == {i: r for i, r in want.items() if i in ids}, (
                f"finished_many({ids}) with {pending} PENDING, {started} STARTED, {retry} "
                f"RETRY and {unknown} unknown: only the terminal records belong")

    def test_finished_many_of_nothing_is_empty(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        running, unknown = new_task_id(), new_task_id()
        backend.store(_record(running, "STARTED"), ttl=None)
        assert backend.finished_many([]) == {}
        assert backend.finished_many(iter(())) == {}
        assert backend.finished_many([unknown]) == {}
        assert backend.finished_many([running, unknown]) == {}

    def test_finished_many_of_many_ids_returns_each_terminal_one(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        ids = [new_task_id() for _ in range(520)]  # past any batch size a driver chunks by
        done, running = ids[0::3], ids[1::3]
        backend.store_many([_record(i, "SUCCESS") for i in done], ttl=None)
        backend.store_many([_record(i, "STARTED") for i in running], ttl=None)
        want = {i: _record(i, "SUCCESS") for i in done}
        assert backend.finished_many(ids) == want
        assert backend.finished_many(iter(ids[::-1])) == want


class BackendCoherenceContract(BackendFixtures):
    """Two driver instances on one store see one state: nothing cached in one hides what the
    other wrote or forgot."""

    def test_forget_through_one_instance_is_seen_by_another(
            self, backend: ResultBackend, backend_factory: Callable[[], ResultBackend],
            task_id: str) -> None:
        other = backend_factory()
        backend.store(_record(task_id, "SUCCESS"), ttl=None)
        assert other.get(task_id) == _record(task_id, "SUCCESS")
        assert other.get_many([task_id]) == {task_id: _record(task_id, "SUCCESS")}
        backend.forget(task_id)
        assert other.get(task_id) is None, "another instance still returns a forgotten record"
        assert other.get_many([task_id]) == {}
        assert other.store(_record(task_id, "FAILURE"), ttl=None) is True, (
            "another instance refused a terminal write after the record was forgotten")
        assert backend.get(task_id) == _record(task_id, "FAILURE")

    def test_finished_many_through_another_instance_sees_each_change(
            self, backend: ResultBackend, backend_factory: Callable[[], ResultBackend],
            task_id: str) -> None:
        other = backend_factory()
        assert other.finished_many([task_id]) == {}
        backend.store(_record(task_id, "STARTED"), ttl=None)
        assert other.finished_many([task_id]) == {}
        backend.store(_record(task_id, "SUCCESS"), ttl=None)
        assert other.finished_many([task_id]) == {task_id: _record(task_id, "SUCCESS")}
        backend.forget(task_id)
        assert other.finished_many([task_id]) == {}, (
            "another instance still reports a forgotten record as finished")

    def test_a_record_written_through_one_instance_is_seen_by_another_that_looked_first(
            self, backend: ResultBackend, backend_factory: Callable[[], ResultBackend],
            task_id: str) -> None:
        other = backend_factory()
        assert other.get(task_id) is None
        backend.store(_record(task_id, "STARTED"), ttl=None)
        assert other.get(task_id) == _record(task_id, "STARTED")
        backend.store(_record(task_id, "SUCCESS"), ttl=None)
        assert other.get(task_id) == _record(task_id, "SUCCESS")
        assert other.store(_record(task_id, "FAILURE"), ttl=None) is False
        assert other.wait(task_id, timeout=1.0) == _record(task_id, "SUCCESS")
