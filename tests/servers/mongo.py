"""A throwaway MongoDB wire-protocol server for the MongoDB driver tests, from a pip package.

No real ``mongod`` is in any registry these machines reach, so the server is SecantusDB
(``secantusdb`` on PyPI: WiredTiger storage behind the MongoDB wire protocol, driven by the
real pymongo over TCP). It runs as a subprocess, so tests can SIGKILL it by PID and start it
again on the same port. ``CONVEYOR_TEST_MONGO_URL`` names a real server to use instead.

Its daemon command has no TTL-sweep flag, so the subprocess builds the server itself (see
``_LAUNCH``) with a one-second sweep instead of mongod's minute.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, terminate, unavailable, wait_for_port

ENV = "CONVEYOR_TEST_MONGO_URL"

_LAUNCH = """
import signal, sys
from secantus.server import SecantusDBServer
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sync, auth, standalone = (flag == "1" for flag in sys.argv[4:7])
server = SecantusDBServer(host=host, port=port, storage_path=path, ttl_sweep_seconds=1,
                          sync_on_commit=sync, require_auth=auth,
                          replica_set_name=None if standalone else "secantus")
def stop(signum, frame):
    server.stop()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
server.start()
server.wait()
"""


def available() -> bool:
    """True when the ``secantusdb`` package is installed."""
    return importlib.util.find_spec("secantus") is not None


class MongoServer:
    """A SecantusDB process on 127.0.0.1, on a port fixed at creation so :meth:`restart`
    brings it back where clients expect it.

    ``durable=False`` keeps data in memory (lost at every stop). ``durable=True`` keeps it
    in a directory and fsyncs every commit: SecantusDB otherwise writes its journal from a
    background thread and loses the last moment's acknowledged writes, and any collection
    created since its last checkpoint, when killed.
    """

    def __init__(self, *, port: int | None = None, durable: bool = False,
                 standalone: bool = False) -> None:
        self.port = port or free_port()
        self.durable = durable
        #: Answer as a standalone server (no replica set, so no change streams), as a
        #: single mongod without ``--replSet`` does.
        self.standalone = standalone
        #: Require SCRAM authentication from the next start (provision users before).
        self.require_auth = False
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-mongo-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mongodb://127.0.0.1:<port>/conveyor_test?directConnection=true``."""
        return f"mongodb://127.0.0.1:{self.port}/conveyor_test?directConnection=true"

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Start the server and wait until it accepts connections (RuntimeError if not)."""
        storage = str(self.dir / "data") if self.durable else ":memory:"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, "127.0.0.1", str(self.port), storage,
             *("1" if flag else "0" for flag in (self.durable, self.require_auth,
                                                  self.standalone))],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "ab"))  # noqa: SIM115
        if not wait_for_port(self.port, timeout=30):
            self.stop()
            log = (self.dir / "log").read_text(errors="replace")[-500:]
            raise RuntimeError(f"SecantusDB did not start on port {self.port}: {log}")

    def kill(self) -> None:
        """SIGKILL the server, as a crash would. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        terminate(proc)

    def close(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def mongo_server(*, durable: bool = False, standalone: bool = False) -> Iterator[MongoServer]:
    """A started :class:`MongoServer`, closed on exit; skips (fails in CI) without
    ``secantusdb``."""
    if not available():
        unavailable("MongoDB: pip install 'secantusdb==0.7.0b3' or set " + ENV)
    server = MongoServer(durable=durable, standalone=standalone)
    try:
        try:
            server.start()
        except RuntimeError as exc:
            unavailable(str(exc))
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """A ``mongodb://`` URL for the whole session (tests use unique queues, ids and keys)."""
    given = os.environ.get(ENV)
    if given:
        yield given
        return
    with mongo_server() as server:
        yield server.url
