"""The result backend contract: what every :class:`~conveyor.backend.ResultBackend` must do.

Subclass :class:`ResultBackendContract` (or only some of its area mixins) in a ``Test*`` class
and provide a ``backend_url`` fixture. Every test uses fresh task ids (``contract-<uuid>``),
forgotten at teardown, so a shared server is fine.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from conveyor.backend import ResultBackend, StoredRecord
from conveyor.registry import backend_from_url
from conveyor.testing.threads import run_together

#: A ttl the expiry tests wait out, and how long past it they wait (second-resolution servers).
SHORT_TTL = 1.0
EXPIRY_SLACK = 0.6
#: Writers racing for one id in the concurrency tests.
RACE_WRITERS = 8
#: How long the store-and-forget race runs (seconds).
RACE_SECONDS = 3.0
LARGE_DATA_SIZE = 256 * 1024


def _record(task_id: str, state: str, data: bytes = b"") -> StoredRecord:
    return StoredRecord(task_id, state, data or f"{state}:{task_id}".encode())


class BackendFixtures:
    """Fixtures shared by the result backend contract areas.

    Provide ``backend_url``. A driver that is not installed through the ``conveyor.backends``
    entry point group may override ``backend_factory`` (a callable building a new, open backend)
    instead; ``backend`` and the tests that need several instances use it.
    """

    @pytest.fixture
    def backend_url(self, request: pytest.FixtureRequest) -> str:
        """The URL of the driver under test. Override it; with the opt-in plugin
        (``-p conveyor.testing.plugin``) it defaults to ``--conveyor-backend-url``."""
        try:
            return str(request.getfixturevalue("conveyor_backend_url"))
        except pytest.FixtureLookupError:
            pytest.fail("define a `backend_url` fixture returning the driver's URL, or run "
                        "pytest with `-p conveyor.testing.plugin --conveyor-backend-url=URL`",
                        pytrace=False)

    @pytest.fixture
    def backend_factory(self, backend_url: str) -> Iterator[Callable[[], ResultBackend]]:
        """Builds backends from ``backend_url`` through the registry; closes them at teardown."""
        made: list[ResultBackend] = []

        def make() -> ResultBackend:
            made.append(backend_from_url(backend_url))
            return made[-1]

        yield make
        for built in made:
            built.close()

    @pytest.fixture
    def backend(self, backend_factory: Callable[[], ResultBackend]) -> ResultBackend:
        """The driver under test."""
        return backend_factory()

    @pytest.fixture
    def new_task_id(self, backend: ResultBackend) -> Iterator[Callable[[], str]]:
        """Makes unique task ids; forgets them at teardown."""
        ids: list[str] = []

        def make() -> str:
            ids.append(f"contract-{uuid.uuid4()}")
            return ids[-1]

        yield make
        for task_id in ids:
            backend.forget(task_id)

    @pytest.fixture
    def task_id(self, new_task_id: Callable[[], str]) -> str:
        """A fresh task id of this test's own."""
        return new_task_id()


class BackendStoreGetContract(BackendFixtures):
    """store / get / get_many / forget."""

    def test_stored_record_is_returned_byte_for_byte(
            self, backend: ResultBackend, task_id: str) -> None:
        record = StoredRecord(task_id, "SUCCESS", bytes(range(256)) + b"\xff\xfe not utf-8")
        assert backend.store(record, ttl=None) is True
        got = backend.get(task_id)
        assert got == record
        assert got is not None
        assert type(got.data) is bytes

    def test_large_record_is_returned_intact(self, backend: ResultBackend, task_id: str) -> None:
        data = (bytes(range(256)) * (LARGE_DATA_SIZE // 256))[:LARGE_DATA_SIZE]
        assert backend.store(StoredRecord(task_id, "SUCCESS", data), ttl=None) is True
        got = backend.get(task_id)
        assert got is not None
        assert got.data == data

    def test_unknown_id_has_no_record(self, backend: ResultBackend, task_id: str) -> None:
        assert backend.get(task_id) is None

    def test_progress_states_overwrite_each_other(
            self, backend: ResultBackend, task_id: str) -> None:
        for state in ("STARTED", "RETRY", "STARTED"):
            record = _record(task_id, state, f"{state} data".encode())
            assert backend.store(record, ttl=None) is True
            assert backend.get(task_id) == record

    def test_get_many_returns_only_existing_records(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        done, running, missing = new_task_id(), new_task_id(), new_task_id()
        backend.store(_record(done, "SUCCESS"), ttl=None)
        backend.store(_record(running, "STARTED"), ttl=None)
        assert backend.get_many([done, running, missing]) == {
            done: _record(done, "SUCCESS"), running: _record(running, "STARTED")}
        assert backend.get_many([]) == {}

    def test_forget_deletes_the_record(self, backend: ResultBackend, task_id: str) -> None:
        backend.store(_record(task_id, "SUCCESS"), ttl=None)
        backend.forget(task_id)
        assert backend.get(task_id) is None
        assert backend.store(_record(task_id, "FAILURE"), ttl=None) is True
        assert backend.get(task_id) == _record(task_id, "FAILURE")

    def test_forget_is_idempotent(self, backend: ResultBackend, task_id: str) -> None:
        backend.forget(task_id)
        backend.store(_record(task_id, "STARTED"), ttl=None)
        backend.forget(task_id)
        backend.forget(task_id)
        assert backend.get(task_id) is None

    def test_records_are_visible_to_another_instance(
            self, backend: ResultBackend, backend_factory: Callable[[], ResultBackend],
            task_id: str) -> None:
        backend.store(_record(task_id, "SUCCESS"), ttl=None)
        assert backend_factory().get(task_id) == _record(task_id, "SUCCESS")

    def test_ping_succeeds_on_a_live_server(self, backend: ResultBackend) -> None:
        backend.ping()

    def test_close_is_idempotent(self, backend_factory: Callable[[], ResultBackend]) -> None:
        extra = backend_factory()
        extra.ping()
        extra.close()
        extra.close()


class BackendTerminalWriteContract(BackendFixtures):
    """The first terminal write wins; nothing overwrites a terminal record."""

    def test_first_terminal_write_wins(self, backend: ResultBackend, task_id: str) -> None:
        assert backend.store(_record(task_id, "SUCCESS"), ttl=None) is True
        assert backend.store(_record(task_id, "FAILURE"), ttl=None) is False
        assert backend.get(task_id) == _record(task_id, "SUCCESS")

    def test_same_terminal_state_is_not_written_twice(
            self, backend: ResultBackend, task_id: str) -> None:
        assert backend.store(_record(task_id, "SUCCESS", b"first"), ttl=None) is True
        assert backend.store(_record(task_id, "SUCCESS", b"second"), ttl=None) is False
        assert backend.get(task_id) == _record(task_id, "SUCCESS", b"first")

    def test_revoked_is_terminal_too(self, backend: ResultBackend, task_id: str) -> None:
        assert backend.store(_record(task_id, "REVOKED"), ttl=None) is True
        assert backend.store(_record(task_id, "SUCCESS"), ttl=None) is False
        assert backend.get(task_id) == _record(task_id, "REVOKED")

    def test_progress_after_a_terminal_state_is_ignored(
            self, backend: ResultBackend, task_id: str) -> None:
        assert backend.store(_record(task_id, "FAILURE"), ttl=None) is True
        for state in ("STARTED", "RETRY", "PENDING"):
            assert backend.store(_record(task_id, state), ttl=None) is False
        assert backend.get(task_id) == _record(task_id, "FAILURE")

    def test_pending_never_replaces_an_existing_record(
            self, backend: ResultBackend, task_id: str) -> None:
        # The producer's PENDING may land after the worker's STARTED: it must not hide it.
        assert backend.store(_record(task_id, "STARTED"), ttl=None) is True
        assert backend.store(_record(task_id, "PENDING"), ttl=None) is False
        assert backend.get(task_id) == _record(task_id, "STARTED")

    def test_pending_is_written_where_no_record_exists(
            self, backend: ResultBackend, task_id: str) -> None:
        assert backend.store(_record(task_id, "PENDING"), ttl=None) is True
        assert backend.get(task_id) == _record(task_id, "PENDING")

    def test_store_many_follows_the_same_rules_per_record(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        done, running, fresh, queued = (new_task_id() for _ in range(4))
        backend.store(_record(done, "SUCCESS", b"kept"), ttl=None)
        backend.store(_record(running, "STARTED"), ttl=None)
        written = backend.store_many(
            [_record(done, "FAILURE"), _record(running, "SUCCESS", b"new"),
             _record(fresh, "PENDING"), _record(queued, "RETRY")], ttl=None)
        assert written == [False, True, True, True]
        assert backend.store_many([_record(running, "PENDING"), _record(fresh, "PENDING")],
                                  ttl=None) == [False, False]
        assert backend.get(done) == _record(done, "SUCCESS", b"kept")
        assert backend.get(running) == _record(running, "SUCCESS", b"new")
        assert backend.get(fresh) == _record(fresh, "PENDING")
        assert backend.store_many([], ttl=None) == []

    def test_terminal_write_replaces_a_progress_state(
            self, backend: ResultBackend, task_id: str) -> None:
        assert backend.store(_record(task_id, "STARTED"), ttl=None) is True
        assert backend.store(_record(task_id, "SUCCESS"), ttl=None) is True
        assert backend.get(task_id) == _record(task_id, "SUCCESS")


class BackendExpiryContract(BackendFixtures):
    """Records expire after their ttl; reads hide expired records."""

    def test_record_is_hidden_once_its_ttl_has_passed(
            self, backend: ResultBackend, task_id: str) -> None:
        backend.store(_record(task_id, "SUCCESS"), ttl=SHORT_TTL)
        assert backend.get(task_id) == _record(task_id, "SUCCESS")
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert backend.get(task_id) is None
        assert backend.get_many([task_id]) == {}

    def test_record_without_ttl_does_not_expire(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        forever, short = new_task_id(), new_task_id()
        backend.store(_record(forever, "SUCCESS"), ttl=None)
        backend.store(_record(short, "SUCCESS"), ttl=SHORT_TTL)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert backend.get(short) is None
        assert backend.get(forever) == _record(forever, "SUCCESS")

    def test_purge_expired_removes_expired_records_and_returns_a_count(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        expired, kept = new_task_id(), new_task_id()
        backend.store(_record(expired, "SUCCESS"), ttl=SHORT_TTL)
        backend.store(_record(kept, "SUCCESS"), ttl=3600.0)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        purged = backend.purge_expired()
        assert isinstance(purged, int)
        assert purged >= 0
        assert backend.get(expired) is None
        assert backend.get(kept) == _record(kept, "SUCCESS")

    def test_expired_terminal_record_does_not_block_a_new_one(
            self, backend: ResultBackend, task_id: str) -> None:
        backend.store(_record(task_id, "FAILURE"), ttl=SHORT_TTL)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert backend.store(_record(task_id, "SUCCESS"), ttl=None) is True
        assert backend.get(task_id) == _record(task_id, "SUCCESS")


def _race_terminal_writes(writers: list[ResultBackend], task_id: str) -> list[bool]:
    """Writers store different terminal records for ``task_id`` at once; return their results."""
    def write(index: int) -> bool:
        state = "SUCCESS" if index % 2 == 0 else "FAILURE"
        return writers[index].store(_record(task_id, state, b"writer-%d" % index), ttl=None)

    return [bool(r) for r in run_together(write, len(writers))]


class BackendConcurrencyContract(BackendFixtures):
    """Terminal writes are atomic: racing writers never both win, progress never replaces one."""

    def _check_one_winner(self, backend: ResultBackend, writers: list[ResultBackend],
                          new_task_id: Callable[[], str]) -> None:
        for _ in range(5):
            task_id = new_task_id()
            won = _race_terminal_writes(writers, task_id)
            assert won.count(True) == 1, f"{won.count(True)} writers won"
            winner = won.index(True)
            stored = backend.get(task_id)
            assert stored is not None
            assert stored.data == b"writer-%d" % winner

    def test_one_of_racing_terminal_writers_sharing_a_backend_wins(
            self, backend: ResultBackend, new_task_id: Callable[[], str]) -> None:
        self._check_one_winner(backend, [backend] * RACE_WRITERS, new_task_id)

    def test_one_of_racing_terminal_writers_with_their_own_backends_wins(
            self, backend: ResultBackend, backend_factory: Callable[[], ResultBackend],
            new_task_id: Callable[[], str]) -> None:
        writers = [backend_factory() for _ in range(RACE_WRITERS)]
        self._check_one_winner(backend, writers, new_task_id)

    def test_progress_writes_racing_a_terminal_write_never_replace_it(
            self, backend: ResultBackend, backend_factory: Callable[[], ResultBackend],
            task_id: str) -> None:
        writers = [backend_factory() for _ in range(RACE_WRITERS)]

        def write(index: int) -> None:
            for round_ in range(15):
                if index == 0 and round_ == 5:
                    writers[0].store(_record(task_id, "SUCCESS"), ttl=None)
                else:
                    writers[index].store(_record(task_id, "STARTED"), ttl=None)

        run_together(write, len(writers))
        assert backend.get(task_id) == _record(task_id, "SUCCESS")

    def test_terminal_writes_racing_forget_of_the_same_id_never_raise(
            self, backend: ResultBackend, backend_factory: Callable[[], ResultBackend],
            task_id: str) -> None:
        # A retried task writing its result while a cleanup forgets it: a write that finds
        # the record gone between two steps of its own must decide again, not fail. Each
        # store answers True or False; afterwards the record is absent or the terminal one.
        writer, forgetter = backend, backend_factory()
        stop = time.monotonic() + RACE_SECONDS

        def work(index: int) -> int:
            done = 0
            while time.monotonic() < stop:
                if index == 0:
                    assert writer.store(_record(task_id, "SUCCESS"), ttl=None) in (True, False)
                else:
                    forgetter.forget(task_id)
                done += 1
            return done

        stores, _ = run_together(work, 2)
        assert stores > 0
        assert backend.get(task_id) in (None, _record(task_id, "SUCCESS"))


class BackendWaitContract(BackendFixtures):
    """wait blocks until a terminal record exists and returns it; None on timeout."""

    def _latency_bound(self, backend: ResultBackend) -> float:
        return 0.15 if backend.capabilities.push_wait else 0.5

    def test_wait_returns_a_record_stored_by_another_thread_promptly(
            self, backend: ResultBackend, backend_factory: Callable[[], ResultBackend],
            task_id: str) -> None:
        writer = backend_factory()
        stored_at: list[float] = []

        def finish() -> None:
            writer.store(_record(task_id, "SUCCESS"), ttl=None)
            stored_at.append(time.monotonic())

        timer = threading.Timer(0.3, finish)
        timer.start()
        try:
            got = backend.wait(task_id, timeout=5.0)
            returned_at = time.monotonic()
        finally:
            timer.join()
        assert got == _record(task_id, "SUCCESS")
        lag = returned_at - stored_at[0]
        assert lag < self._latency_bound(backend), f"returned {lag:.3f}s after the store"

    def test_wait_returns_an_existing_terminal_record_at_once(
            self, backend: ResultBackend, task_id: str) -> None:
        backend.store(_record(task_id, "FAILURE"), ttl=None)
        started = time.monotonic()
        assert backend.wait(task_id, timeout=5.0) == _record(task_id, "FAILURE")
        assert time.monotonic() - started < self._latency_bound(backend)

    def test_wait_returns_none_on_timeout(self, backend: ResultBackend, task_id: str) -> None:
        started = time.monotonic()
        assert backend.wait(task_id, timeout=0.5) is None
        elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 1.5, f"returned after {elapsed:.3f}s"

    def test_wait_returns_none_after_a_timeout_longer_than_any_internal_block(
            self, backend: ResultBackend, task_id: str) -> None:
        # A blocking wait loops over blocks of a few seconds, each shorter than the client's
        # socket timeout (redis-py's is 5 s): a timeout above one block must still end in
        # None at the timeout, not in a read timeout. Polling backends: above their backoff.
        timeout = 5.5 if backend.capabilities.push_wait else 1.2
        started = time.monotonic()
        assert backend.wait(task_id, timeout=timeout) is None
        elapsed = time.monotonic() - started
        assert timeout - 0.05 <= elapsed < timeout + 1.0, f"returned after {elapsed:.3f}s"

    def test_wait_ignores_progress_states(self, backend: ResultBackend, task_id: str) -> None:
        backend.store(_record(task_id, "STARTED"), ttl=None)
        assert backend.wait(task_id, timeout=0.3) is None
