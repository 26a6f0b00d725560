"""Contract fixtures shared by our drivers' test classes: the URL of an unreachable server.

``unreachable_broker_url`` / ``unreachable_backend_url`` are the live URL under test with its
server swapped for a closed port on 127.0.0.1 (or, for SQLite, a path that cannot be opened),
so the outage contract (:mod:`conveyor.testing.outage`) runs for every driver we ship.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from tests.servers import free_port


def dead_server_url(url: str, port: int, tmp_path: Path) -> str:
    """``url`` pointing at ``127.0.0.1:port`` (nothing listens there) instead of its server."""
    scheme = url.split("://", 1)[0]
    if scheme.startswith("sqlite"):
        unopenable = tmp_path / "a-directory-not-a-database"
        unopenable.mkdir(exist_ok=True)
        return f"sqlite:///{unopenable}"
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if scheme in ("sqs", "s3"):
        return re.sub(r"endpoint_url=[^&]*", f"endpoint_url=http://127.0.0.1:{port}", url)
    if scheme.startswith("mongodb"):
        query = [(k, v) for k, v in query if k != "serverSelectionTimeoutMS"]
        query.append(("serverSelectionTimeoutMS", "1000"))
    netloc = re.sub(r"(^|@)[^@]*$", lambda m: f"{m.group(1)}127.0.0.1:{port}", parts.netloc)
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/:")))


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (free a moment ago)."""
    return free_port()


@pytest.fixture
def unreachable_broker_url(broker_url: str, closed_port: int, tmp_path: Path) -> str:
    return dead_server_url(broker_url, closed_port, tmp_path)


@pytest.fixture
def unreachable_backend_url(backend_url: str, closed_port: int, tmp_path: Path) -> str:
    return dead_server_url(backend_url, closed_port, tmp_path)
