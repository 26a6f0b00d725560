"""The coordination contract: ``join`` and the entry area of a result backend.

Run by :class:`~conveyor.testing.ResultBackendContract`; every test is skipped, naming the
capability, when the driver does not declare ``coordination=True``. Keys are fresh per test
(``contract-<uuid>``), so a shared server is fine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from conveyor.backend import ResultBackend
from conveyor.testing.backend import EXPIRY_SLACK, RACE_WRITERS, SHORT_TTL, BackendFixtures
from conveyor.testing.threads import run_together


class BackendCoordinationContract(BackendFixtures):
    """join / put_entry / entries / delete_entry."""

    @pytest.fixture
    def coordinating(self, backend: ResultBackend) -> ResultBackend:
        """The backend under test, or a skip naming the missing capability."""
        if not backend.capabilities.coordination:
            pytest.skip(f"{type(backend).__name__} does not declare coordination=True")
        return backend

    @pytest.fixture
    def key(self) -> str:
        """A fresh key of this test's own."""
        return f"contract-{uuid.uuid4()}"

    @pytest.fixture
    def entry_prefix(self, coordinating: ResultBackend) -> Iterator[str]:
        """A fresh entry prefix; its entries are deleted at teardown."""
        prefix = f"contract-{uuid.uuid4()}/"
        yield prefix
        for name in coordinating.entries(prefix):
            coordinating.delete_entry(name)

    # -- join -----------------------------------------------------------------------------
    def test_join_counts_distinct_members(self, coordinating: ResultBackend, key: str) -> None:
        assert coordinating.join(key, "a", ttl=60) == 1
        assert coordinating.join(key, "b", ttl=60) == 2
        assert coordinating.join(key, "c", ttl=60) == 3

    def test_join_of_a_member_already_there_counts_it_once(
            self, coordinating: ResultBackend, key: str) -> None:
        assert coordinating.join(key, "a", ttl=60) == 1
        assert coordinating.join(key, "a", ttl=60) == 1
        assert coordinating.join(key, "b", ttl=60) == 2
        assert coordinating.join(key, "a", ttl=60) == 2

    def test_join_sets_are_separate_per_key(self, coordinating: ResultBackend, key: str) -> None:
        other = key + "-other"
        coordinating.join(key, "a", ttl=60)
        coordinating.join(key, "b", ttl=60)
        assert coordinating.join(other, "a", ttl=60) == 1

    def test_join_key_never_collides_with_a_task_id(
            self, coordinating: ResultBackend, key: str) -> None:
        coordinating.join(key, "a", ttl=60)
        assert coordinating.get(key) is None
        coordinating.put_entry(key, b"x", ttl=60)
        try:
            assert coordinating.get(key) is None
            assert coordinating.join(key, "b", ttl=60) == 2
        finally:
            coordinating.delete_entry(key)

    def test_members_with_odd_characters_are_distinct(
            self, coordinating: ResultBackend, key: str) -> None:
        members = ["a", "A", "a ", "a:b", "a/b", "ü", "a\u200bb", "%", "*", "[x]"]
        counts = [coordinating.join(key, m, ttl=60) for m in members]
        assert counts == list(range(1, len(members) + 1))

    def test_racing_joins_each_see_a_different_count(
            self, coordinating: ResultBackend, key: str) -> None:
        counts = run_together(lambda i: coordinating.join(key, f"m{i}", ttl=60), RACE_WRITERS)
        assert sorted(counts) == list(range(1, RACE_WRITERS + 1))

    def test_joined_set_expires_after_its_ttl(
            self, coordinating: ResultBackend, key: str) -> None:
        coordinating.join(key, "a", ttl=SHORT_TTL)
        coordinating.join(key, "b", ttl=SHORT_TTL)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert coordinating.join(key, "c", ttl=60) == 1

    def test_join_refreshes_the_expiry(self, coordinating: ResultBackend, key: str) -> None:
        coordinating.join(key, "a", ttl=SHORT_TTL)
        coordinating.join(key, "b", ttl=60)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert coordinating.join(key, "c", ttl=60) == 3

    def test_join_is_seen_by_another_instance(
            self, coordinating: ResultBackend, key: str,
            backend_factory: Callable[[], ResultBackend]) -> None:
        coordinating.join(key, "a", ttl=60)
        assert backend_factory().join(key, "b", ttl=60) == 2

    # -- entries --------------------------------------------------------------------------
    def test_entry_is_returned_by_prefix(
            self, coordinating: ResultBackend, entry_prefix: str) -> None:
        coordinating.put_entry(entry_prefix + "one", b"1", ttl=60)
        coordinating.put_entry(entry_prefix + "two", bytes(range(256)), ttl=None)
        coordinating.put_entry(entry_prefix[:-1] + "-elsewhere", b"no", ttl=60)
        try:
            assert coordinating.entries(entry_prefix) == {
                entry_prefix + "one": b"1", entry_prefix + "two": bytes(range(256))}
        finally:
            coordinating.delete_entry(entry_prefix[:-1] + "-elsewhere")

    def test_prefix_is_literal_not_a_pattern(
            self, coordinating: ResultBackend, entry_prefix: str) -> None:
        coordinating.put_entry(entry_prefix + "a", b"1", ttl=60)
        for pattern in ("*", "%", "_", "?", "[a]", ".*"):
            assert coordinating.entries(entry_prefix + pattern) == {}

    def test_put_entry_replaces_the_value(
            self, coordinating: ResultBackend, entry_prefix: str) -> None:
        coordinating.put_entry(entry_prefix + "w", b"old", ttl=60)
        coordinating.put_entry(entry_prefix + "w", b"new", ttl=60)
        assert coordinating.entries(entry_prefix) == {entry_prefix + "w": b"new"}

    def test_entry_expires_after_its_ttl_and_rewrite_refreshes_it(
            self, coordinating: ResultBackend, entry_prefix: str) -> None:
        coordinating.put_entry(entry_prefix + "gone", b"1", ttl=SHORT_TTL)
        coordinating.put_entry(entry_prefix + "kept", b"1", ttl=SHORT_TTL)
        coordinating.put_entry(entry_prefix + "kept", b"2", ttl=60)
        time.sleep(SHORT_TTL + EXPIRY_SLACK)
        assert coordinating.entries(entry_prefix) == {entry_prefix + "kept": b"2"}

    def test_delete_entry_is_idempotent(
            self, coordinating: ResultBackend, entry_prefix: str) -> None:
        coordinating.put_entry(entry_prefix + "x", b"1", ttl=60)
        coordinating.delete_entry(entry_prefix + "x")
        coordinating.delete_entry(entry_prefix + "x")
        assert coordinating.entries(entry_prefix) == {}

    def test_purge_expired_keeps_live_sets_and_entries(
            self, coordinating: ResultBackend, key: str, entry_prefix: str) -> None:
        coordinating.join(key, "a", ttl=60)
        coordinating.join(key + "-forever", "a", ttl=None)
        coordinating.put_entry(entry_prefix + "minute", b"1", ttl=60)
        coordinating.put_entry(entry_prefix + "forever", b"2", ttl=None)
        coordinating.purge_expired()
        assert coordinating.entries(entry_prefix) == {
            entry_prefix + "minute": b"1", entry_prefix + "forever": b"2"}
        assert coordinating.join(key, "b", ttl=60) == 2
        assert coordinating.join(key + "-forever", "b", ttl=60) == 2

    def test_entry_never_collides_with_a_task_record(
            self, coordinating: ResultBackend, entry_prefix: str,
            new_task_id: Callable[[], str]) -> None:
        task_id = new_task_id()
        coordinating.put_entry(task_id, b"entry", ttl=60)
        try:
            assert coordinating.get(task_id) is None
            coordinating.forget(task_id)
            assert coordinating.entries(task_id) == {task_id: b"entry"}
        finally:
            coordinating.delete_entry(task_id)
