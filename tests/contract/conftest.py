"""Contract fixtures shared by our drivers' test classes: the URL of an unreachable server.

``unreachable_broker_url`` / ``unreachable_backend_url`` are the live URL under test with its
server swapped for a closed port on 127.0.0.1 (or, for SQLite, a path that cannot be opened),
so the outage contract (:mod:`conveyor.testing.outage`) runs for every driver we ship.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.testing.outage import unreachable_url
from tests.servers import free_port


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (free a moment ago)."""
    return free_port()


@pytest.fixture
def not_a_database(tmp_path: Path) -> Path:
    """A directory: SQLite cannot open it as a database file."""
    path = tmp_path / "a-directory-not-a-database"
    path.mkdir()
    return path


@pytest.fixture
def unreachable_broker_url(broker_url: str, closed_port: int, not_a_database: Path) -> str:
    return unreachable_url(broker_url, closed_port, not_a_database)


@pytest.fixture
def unreachable_backend_url(backend_url: str, closed_port: int, not_a_database: Path) -> str:
    return unreachable_url(backend_url, closed_port, not_a_database)
