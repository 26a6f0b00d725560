"""The SQL backend's v3 migration: results tables of older versions gain the query columns
and indexes on first use, keeping their rows."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from conveyor.backend import RecordQuery, StoredRecord
from conveyor.registry import backend_from_url


def test_an_older_results_table_is_migrated_and_queryable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the results table as conveyor before v3 created it
        conn.execute(sa.text(
            "CREATE TABLE conveyor_results (task_id VARCHAR(255) PRIMARY KEY, state "
            "VARCHAR(16) NOT NULL, data BLOB NOT NULL, expires_at FLOAT, updated_at FLOAT "
            "NOT NULL)"))
        conn.execute(sa.text("INSERT INTO conveyor_results VALUES ('old', 'SUCCESS', x'7b7d',"
                             " NULL, 1.0)"))
        conn.execute(sa.text("CREATE TABLE conveyor_schema (component VARCHAR(32) PRIMARY KEY,"
                             " version INTEGER NOT NULL)"))
        conn.execute(sa.text("INSERT INTO conveyor_schema VALUES ('backend', 1)"))
    backend = backend_from_url(url)
    try:
        assert backend.get("old") == StoredRecord("old", "SUCCESS", b"{}")
        backend.store(StoredRecord("new", "FAILURE", b"{}", "t", "q", "w"), ttl=None)
        page = backend.query(RecordQuery(state="FAILURE", name="t", queue="q", worker="w"))
        assert [r.task_id for r in page.records] == ["new"]
        # Rows written before the migration are found by state and time, not by name.
        assert [r.task_id for r in backend.query(RecordQuery(state="SUCCESS")).records] == [
            "old"]
        assert backend.info()["schema"].endswith("(current)")
        with engine.connect() as conn:
            names = {i["name"] for i in sa.inspect(conn).get_indexes("conveyor_results")}
        assert {"conveyor_results_recent", "conveyor_results_by_state",
                "conveyor_results_by_name", "conveyor_results_by_queue"} <= names
    finally:
        backend.close()
        engine.dispose()
