"""A MySQL/MariaDB for the SQL driver tests: only from ``CONVEYOR_TEST_MYSQL_URL``.

No MySQL or MariaDB server comes from pip, so without the variable the tests are skipped
(and fail under CI). The server is shared: each session works in a fresh database that it
drops at the end, or, when the user may not create one, in the given database (tests then
rely on unique queue names and ids).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.servers import unavailable

ENV = "CONVEYOR_TEST_MYSQL_URL"


@pytest.fixture(scope="session")
def mysql_url() -> Iterator[str]:
    """A ``mysql+pymysql://`` URL to an empty database, for the whole session."""
    given = os.environ.get(ENV)
    if not given:
        unavailable(f"MySQL/MariaDB: set {ENV}, e.g. mysql+pymysql://root@127.0.0.1:3306/test")
    import sqlalchemy as sa

    name = f"conveyor_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(given, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    except sa.exc.OperationalError as exc:
        if "Can't connect" in str(exc) or "Lost connection" in str(exc):
            admin.dispose()
            unavailable(f"MySQL/MariaDB at {sa.make_url(given)!r} is unreachable: {exc.orig}")
        admin.dispose()
        yield given  # no CREATE privilege: share the given database
        return
    except sa.exc.DBAPIError:
        admin.dispose()
        yield given
        return
    try:
        yield sa.make_url(given).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(sa.exc.DBAPIError), admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()
