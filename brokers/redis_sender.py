"""Single sends for the Redis broker, written now and confirmed on the thread's next call.

Waiting for Redis to answer "stored" was most of the cost of ``delay()``. Here each sending
thread holds a connection; a send writes its command and returns, and the reply is read just
before that thread's next command to the broker (it has usually arrived by then), at
:meth:`PipelinedSender.confirm` and at interpreter exit. At most one send per thread is
unconfirmed at a time.

What a caller may rely on: once :meth:`PipelinedSender.send` returns, the command is in the
kernel's socket buffer, which delivers it even if this process is killed right away. A
connection the server closed meanwhile is noticed before writing (the write goes to a fresh
one). When a reply turns out to be a lost connection, the command is written again (at least
once, as a publish retry is) before anything else is sent; when that fails, the next call
raises :class:`~conveyor.exceptions.ConnectionLostError` and keeps the command to try again.
When Redis refused it (out of memory, a read-only replica), the next call raises, naming it.
The script is sent with EVAL, so a restarted server never answers "no such script".
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from conveyor.exceptions import DriverError
from conveyor.stores.redis import RedisErrors

if TYPE_CHECKING:
    import redis

log = logging.getLogger("conveyor.redis")


class _Connection(Protocol):
    """The part of redis-py's ``Connection`` used here (typed: redis-py's is not)."""

    def send_command(self, *args: Any) -> None: ...
    def read_response(self) -> Any: ...
    def can_read(self, timeout: float = 0) -> bool: ...
    def disconnect(self) -> None: ...


class _Held:
    """One thread's connection and its unconfirmed command, if any."""

    __slots__ = ("conn", "pid", "unconfirmed")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.unconfirmed: tuple[Any, ...] | None = None


def compact_lua(source: str) -> str:
    """``source`` without comments and blank lines: what EVAL sends each time."""
    lines = (re.sub(r"--.*$", "", line).rstrip() for line in source.splitlines())
    return "\n".join(line for line in lines if line)


class PipelinedSender:
    """Runs one Lua script with write-now, confirm-later semantics (see the module
    docstring). Thread-safe: each thread writes on its own connection from ``client``'s pool.
    """

    def __init__(self, client: redis.Redis, script: str, errors: RedisErrors) -> None:
        self._client = client
        self._script = compact_lua(script)
        self._errors = errors
        self._local = threading.local()
        self._lock = threading.Lock()
        #: Every thread's connection by thread (not by id: ids are reused), so that a
        #: finished thread's last send is still confirmed and its connection goes back to
        #: the pool.
        self._by_thread: dict[threading.Thread, _Held] = {}
        _LIVE.add(self)

    def send(self, keys: Sequence[bytes], args: Sequence[Any]) -> None:
        """Confirm this thread's previous send, then write ``EVAL script keys args``.

        Raises :class:`~conveyor.exceptions.ConnectionLostError` when the command cannot be
        written (nothing was sent), or the previous send's error (see :meth:`confirm`).
        """
        from redis import exceptions as rx

        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():
            with self._errors:
                held = self._take_connection()
        elif held.unconfirmed is not None:
            self._confirm(held)
        command = ("EVAL", self._script, len(keys), *keys, *args)
        conn = held.conn
        with self._errors:
            try:
                if conn.can_read(timeout=0):
                    # Nothing is owed to us, so the server closed the connection (restart,
                    # idle timeout): writing there would go nowhere.
                    raise rx.ConnectionError("connection closed by the server")
                conn.send_command(*command)
            except (rx.ConnectionError, rx.TimeoutError, OSError):
                conn.disconnect()
                conn.send_command(*command)  # reconnects; an error here means nothing sent
        held.unconfirmed = command

    def confirm(self, *, quietly: bool = False) -> None:
        """Read this thread's unconfirmed reply, if any.

        Raises :class:`~conveyor.exceptions.ConnectionLostError` when the command had to be
        written again and could not be (it stays unconfirmed and is tried again on the next
        call), :class:`~conveyor.exceptions.DriverError` once when Redis refused it; with
        ``quietly``, logs either instead (for closing).
        """
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.unconfirmed is not None and held.pid == os.getpid():
            if quietly:
                self._confirm_quietly(held)
            else:
                self._confirm(held)

    def confirm_all(self) -> None:
        """Confirm the last send of this thread and of every finished thread, logging what
        fails; for exit. Threads still running (daemons at exit) are left alone: reading
        their connection could interleave with their own use of it."""
        me = threading.current_thread()
        with self._lock:
            every = [held for thread, held in self._by_thread.items()
                     if thread is me or not thread.is_alive()]
        for held in every:
            self._confirm_quietly(held)

    def _take_connection(self) -> _Held:
        # First send on this thread, or in a forked child (never touch the parent's socket).
        # Finished threads' connections go back to the pool first, so that a program that
        # sends from short-lived threads reuses a few connections instead of opening more.
        pool = self._client.connection_pool
        with self._lock:
            retired = [self._by_thread.pop(t) for t in list(self._by_thread)
                       if not t.is_alive()]
        for old in retired:
            self._confirm_quietly(old)
            if old.pid == os.getpid():
                pool.release(old.conn)  # type: ignore[arg-type]
        held = _Held(cast(_Connection, pool.get_connection()))
        self._local.held = held
        with self._lock:
            self._by_thread[threading.current_thread()] = held
        return held

    def _confirm_quietly(self, held: _Held) -> None:
        if held.unconfirmed is None or held.pid != os.getpid():
            return
        try:
            self._confirm(held)
        except DriverError as exc:
            log.error("a message sent to Redis just before its thread finished, the broker "
                      "closed or the process exited may not be stored: %s", exc)

    def _confirm(self, held: _Held) -> None:
        from redis import exceptions as rx

        command = held.unconfirmed
        if command is None:
            return
        try:
            with self._errors:
                try:
                    held.conn.read_response()
                except (rx.ConnectionError, rx.TimeoutError, OSError):
                    # It may or may not have run: run it again (at least once, never lost).
                    held.conn.disconnect()
                    held.conn.send_command(*command)
                    held.conn.read_response()
        except DriverError as exc:
            if exc.retryable:
                raise  # still unconfirmed: written again on the next call
            held.unconfirmed = None
            raise DriverError(f"an earlier message was refused: {exc}") from exc
        held.unconfirmed = None


_LIVE: weakref.WeakSet[PipelinedSender] = weakref.WeakSet()


@atexit.register
def _confirm_at_exit() -> None:
    for sender in list(_LIVE):
        sender.confirm_all()
