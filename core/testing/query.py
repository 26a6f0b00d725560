"""The query contract: :meth:`~conveyor.backend.ResultBackend.query` over stored records.

Run by :class:`~conveyor.testing.ResultBackendContract`; every test is skipped, naming the
capability, when the driver does not declare ``query=True``. Each test gives its records a
task name of its own (``contract-<uuid>``) and filters by it, so a shared server holding
other records is fine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from conveyor.backend import RecordQuery, ResultBackend, StoredRecord
from conveyor.exceptions import DriverError
from conveyor.testing.backend import EXPIRY_SLACK, SHORT_TTL, BackendFixtures

#: Pause between writes whose order a test asserts (servers keep microseconds or ms).
_GAP = 0.02


def collect(backend: ResultBackend, query: RecordQuery, *, pages: int = 1000) -> list[str]:
    """Every task id the query yields, following cursors, in the order returned."""
    ids: list[str] = []
    cursor = query.cursor
    for _ in range(pages):
        page = backend.query(RecordQuery(**{**query.__dict__, "cursor": cursor}))
        assert len(page.records) <= query.limit
        ids += [r.task_id for r in page.records]
        if page.cursor is None:
            return ids
        cursor = page.cursor
    raise AssertionError(f"query did not end within {pages} pages")


class BackendQueryContract(BackendFixtures):
    """query: filters, order, cursors, expiry, state changes."""

    @pytest.fixture
    def querying(self, backend: ResultBackend) -> ResultBackend:
        """The backend under test, or a skip naming the missing capability."""
        if not backend.capabilities.query:
            pytest.skip(f"{type(backend).__name__} does not declare query=True")
        return backend

    @pytest.fixture
    def name(self) -> str:
        """A task name of this test's own."""
        return f"contract-{uuid.uuid4()}"

    @pytest.fixture
    def put(self, querying: ResultBackend, name: str,
            new_task_id: Callable[[], str]) -> Callable[..., str]:
        """Stores a record under this test's task name (a fresh id unless given); returns
        the id. Pauses a little after each write so that write order is time order."""
        def put(state: str = "SUCCESS", *, task_id: str | None = None, queue: str = "q1",
                worker: str | None = "w1", ttl: float | None = 60.0,
                task_name: str | None = None) -> str:
            task_id = task_id or new_task_id()
            querying.store(StoredRecord(task_id, state, f"{state}:{task_id}".encode(),
                                        task_name or name, queue, worker), ttl=ttl)
            time.sleep(_GAP)
            return task_id

        return put

    def test_newest_write_first_and_data_returned(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        ids = [put() for _ in range(3)]
        assert collect(querying, RecordQuery(name=name)) == ids[::-1]
        page = querying.query(RecordQuery(name=name, limit=1))
        first = page.records[0]
        assert (first.state, first.data) == ("SUCCESS", f"SUCCESS:{ids[2]}".encode())

    def test_cursor_pages_visit_each_match_once_in_order(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        ids = [put() for _ in range(7)]
        assert collect(querying, RecordQuery(name=name, limit=3)) == ids[::-1]
        assert collect(querying, RecordQuery(name=name, limit=1)) == ids[::-1]

    def test_a_full_last_page_may_end_with_a_cursor_but_the_next_is_empty(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        ids = [put() for _ in range(4)]
        first = querying.query(RecordQuery(name=name, limit=4))
        rest = collect(querying, RecordQuery(name=name, limit=4, cursor=first.cursor)) \
            if first.cursor else []
        assert [r.task_id for r in first.records] + rest == ids[::-1]

    def test_filters_by_state_queue_and_worker(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        done = put("SUCCESS", queue="qa", worker="wa")
        failed = put("FAILURE", queue="qb", worker="wa")
        started = put("STARTED", queue="qa", worker="wb")
        pending = put("PENDING", queue="qb", worker=None)
        assert collect(querying, RecordQuery(name=name, state="FAILURE")) == [failed]
        assert collect(querying, RecordQuery(name=name, state="PENDING")) == [pending]
        assert collect(querying, RecordQuery(name=name, queue="qa")) == [started, done]
        assert collect(querying, RecordQuery(name=name, worker="wa")) == [failed, done]
        assert collect(querying, RecordQuery(name=name, queue="qa", state="SUCCESS")) == [done]
        assert collect(querying, RecordQuery(name=name, queue="qb", worker="wb")) == []

    def test_filter_by_name_alone_and_with_others(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        mine = put(queue="qn")
        other = put(queue="qn", task_name=name + "-other")
        assert collect(querying, RecordQuery(name=name)) == [mine]
        assert collect(querying, RecordQuery(name=name + "-other", queue="qn")) == [other]
        assert collect(querying, RecordQuery(name=f"contract-{uuid.uuid4()}")) == []

    def test_id_prefix_matches_the_start_exactly(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        stem = f"contract-{uuid.uuid4()}"
        a = put(task_id=stem + "-a1")
        b = put(task_id=stem + "-a2")
        put(task_id=stem + "-b1")
        upper = put(task_id=stem + "-A1")
        assert collect(querying, RecordQuery(id_prefix=stem + "-a")) == [b, a]
        assert collect(querying, RecordQuery(id_prefix=stem + "-A")) == [upper]
        assert collect(querying, RecordQuery(id_prefix=stem + "-a", name=name, limit=1)) == [b, a]
        assert collect(querying, RecordQuery(id_prefix=stem + "-a%")) == []
        assert collect(querying, RecordQuery(id_prefix=stem + "-a_")) == []

    def test_id_prefix_may_end_in_the_last_code_point(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        # No character sorts after U+10FFFF: a driver turning the prefix into a range (from
        # the prefix up to the prefix with its last character bumped) must not bump that one.
        stem = f"contract-{uuid.uuid4()}-"
        last = put(task_id=stem + "\U0010ffff-1")
        put(task_id=stem + "\U0010fffe-1")
        put(task_id=stem + "z")
        assert collect(querying, RecordQuery(id_prefix=stem + "\U0010ffff")) == [last]
        assert collect(querying, RecordQuery(id_prefix="\U0010ffff" + stem)) == []

    def test_records_come_back_with_their_latest_labels(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        # The dashboard lists name, queue and worker from the query's records themselves.
        plain = put(queue="qa", worker="wa")
        anonymous = put("STARTED", queue="qb", worker=None)
        moved = put("STARTED", queue="qc", worker="w-old")
        put("SUCCESS", task_id=moved, queue="qd", worker="w-new")
        labels = {r.task_id: (r.state, r.name, r.queue, r.worker)
                  for r in querying.query(RecordQuery(name=name, limit=10)).records}
        assert labels == {plain: ("SUCCESS", name, "qa", "wa"),
                          anonymous: ("STARTED", name, "qb", None),
                          moved: ("SUCCESS", name, "qd", "w-new")}

    def test_time_bounds(self, querying: ResultBackend, put: Callable[..., str],
                         name: str) -> None:
        old = put()
        time.sleep(0.3)
        middle = time.time()
        new = put()
        assert collect(querying, RecordQuery(name=name, since=middle)) == [new]
        assert collect(querying, RecordQuery(name=name, until=middle)) == [old]
        assert collect(querying, RecordQuery(name=name, since=middle - 3600,
                                             until=middle + 3600)) == [new, old]

    def test_a_new_state_moves_the_record(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        task_id = put("PENDING", worker=None)
        other = put("STARTED")
        put("STARTED", task_id=task_id, worker="w1")
        put("RETRY", task_id=task_id, worker="w2")
        assert collect(querying, RecordQuery(name=name, state="PENDING")) == []
        assert collect(querying, RecordQuery(name=name, state="STARTED")) == [other]
        assert collect(querying, RecordQuery(name=name, state="RETRY")) == [task_id]
        assert collect(querying, RecordQuery(name=name, worker="w1")) == [other]
        # The latest write orders it: it was rewritten after `other`.
        assert collect(querying, RecordQuery(name=name)) == [task_id, other]
        put("SUCCESS", task_id=task_id, worker="w2")
        assert collect(querying, RecordQuery(name=name, state="RETRY")) == []
        assert collect(querying, RecordQuery(name=name, state="SUCCESS")) == [task_id]

    def test_a_refused_write_changes_nothing_a_query_sees(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        task_id = put("SUCCESS", queue="qx", worker="wx")
        later = put("SUCCESS")
        put("STARTED", task_id=task_id, queue="qy", worker="wy")  # refused: terminal
        assert collect(querying, RecordQuery(name=name)) == [later, task_id]
        assert collect(querying, RecordQuery(name=name, state="STARTED")) == []
        assert collect(querying, RecordQuery(name=name, worker="wx")) == [task_id]
        assert collect(querying, RecordQuery(name=name, queue="qy")) == []

    def test_forgotten_records_are_gone(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        kept = put()
        gone = put()
        querying.forget(gone)
        assert collect(querying, RecordQuery(name=name)) == [kept]
        assert collect(querying, RecordQuery(name=name, state="SUCCESS", queue="q1")) == [kept]

    def test_expired_records_are_left_out(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        kept = put(ttl=None)
        put(ttl=SHORT_TTL)
        put("FAILURE", ttl=SHORT_TTL)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert collect(querying, RecordQuery(name=name)) == [kept]
        assert collect(querying, RecordQuery(name=name, state="FAILURE")) == []
        assert collect(querying, RecordQuery(name=name, limit=1)) == [kept]

    def test_hostile_names_are_plain_values(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        odd = name + "'; DROP TABLE x; -- %_*?[]\\ \u00e9\U0001f600"
        task_id = put(task_name=odd, queue="q*[x]", worker="w%_")
        put(task_name=name + "'; DROP TABLE x; -- %_*?[]\\ X", queue="q*[y]", worker="w%x")
        assert collect(querying, RecordQuery(name=odd)) == [task_id]
        assert collect(querying, RecordQuery(name=odd, queue="q*[x]", worker="w%_")) == [task_id]
        assert collect(querying, RecordQuery(name=odd, queue="q*")) == []

    def test_a_page_is_at_most_the_limit_and_large_pages_work(
            self, querying: ResultBackend, put: Callable[..., str], name: str) -> None:
        ids = [put() for _ in range(5)]
        assert collect(querying, RecordQuery(name=name, limit=500)) == ids[::-1]
        assert collect(querying, RecordQuery(name=name, limit=2)) == ids[::-1]

    def test_a_bad_cursor_is_a_clear_error(self, querying: ResultBackend) -> None:
        with pytest.raises(DriverError, match="cursor"):
            querying.query(RecordQuery(cursor="not a cursor"))
