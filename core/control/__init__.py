"""``app.control``: revoke tasks, read the worker registry, send commands to workers.

The registry lives in the result backend's entry area (``worker:<hostname>``, written by each
worker's agent every heartbeat, expiring after three); commands travel on each worker's
control queue on the broker (see :mod:`conveyor.control.channel`). Both need a backend with
coordination primitives; revocations too (see :mod:`conveyor.control.revoke`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor.control.agent import REGISTRY_PREFIX
from conveyor.control.channel import REPLY_PREFIX, control_queue, encode_command
from conveyor.control.revoke import revoke
from conveyor.ids import new_id

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["Control", "Inspect"]


class Inspect:
    """What the registry says about live workers (optionally only ``destination``)."""

    def __init__(self, app: Conveyor, destination: str | Iterable[str] | None = None) -> None:
        self.app = app
        self.destination = _names(destination)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Every live worker's entry, by hostname."""
        found: dict[str, dict[str, Any]] = {}
        for key, value in self.app.backend.entries(REGISTRY_PREFIX).items():
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            name = key[len(REGISTRY_PREFIX):]
            if isinstance(entry, dict) and (self.destination is None
                                            or name in self.destination):
                found[name] = entry
        return found

    def active(self, safe: bool | None = None) -> dict[str, list[dict[str, Any]]]:
        """Tasks running now, per worker (id, task, started). ``safe`` is Celery's, ignored:
        nothing is unpickled."""
        return {name: e.get("active", []) for name, e in self.workers().items()}

    def registered(self, *taskinfoitems: str) -> dict[str, list[str]]:
        """Task names each worker knows (Celery's ``taskinfoitems`` are accepted, ignored)."""
        return {name: e.get("registered", []) for name, e in self.workers().items()}

    def reserved(self, safe: bool | None = None) -> dict[str, list[dict[str, Any]]]:
        """Messages each worker holds but has not started (its prefetch): id, task, queue,
        delivery number; as of the worker's last heartbeat."""
        return {name: e.get("reserved", []) for name, e in self.workers().items()}

    def scheduled(self, safe: bool | None = None) -> dict[str, list[dict[str, Any]]]:
        """Always empty lists: unlike Celery's, a conveyor worker never holds a task with a
        countdown or eta; the broker keeps it until it is due (``conveyor queues`` counts
        the delayed ones)."""
        return {name: [] for name in self.workers()}

    def revoked(self) -> dict[str, list[str]]:
        """The revoked task ids, per worker. Revocations are stored in the backend and hold
        for every worker alike, so each live worker gets the same list (one read)."""
        from conveyor.control.revoke import revoked_ids

        workers = self.workers()
        ids = sorted(revoked_ids(self.app)) if workers else []
        return {name: list(ids) for name in workers}

    def query_task(self, *ids: str | Iterable[str]) -> dict[str, dict[str, list[Any]]]:
        """Where each of ``ids`` is held, per worker: ``{id: ["active" | "reserved", info]}``
        (Celery's shape); ids no worker holds are left out."""
        wanted: set[str] = set()
        for item in ids:
            wanted.update([item] if isinstance(item, str) else item)
        found: dict[str, dict[str, list[Any]]] = {}
        for name, e in self.workers().items():
            held: dict[str, list[Any]] = {}
            for state in ("active", "reserved"):
                for info in e.get(state, []):
                    if isinstance(info, dict) and info.get("id") in wanted:
                        held[str(info["id"])] = [state, info]
            found[name] = held
        return found

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters and settings per worker (everything but the task lists)."""
        return {name: {k: v for k, v in e.items()
                       if k not in ("active", "registered", "reserved")}
                for name, e in self.workers().items()}

    def ping(self) -> dict[str, dict[str, Any]]:
        """Workers whose heartbeat is in the registry, with its age in seconds."""
        now = time.time()
        return {name: {"ok": "pong", "age": now - float(e.get("heartbeat", now))}
                for name, e in self.workers().items()}

    registered_tasks = registered


def _names(destination: str | Iterable[str] | None) -> set[str] | None:
    """Worker names as a set: one name given as a string is one name, not its letters."""
    if destination is None:
        return None
    return {destination} if isinstance(destination, str) else set(destination)


class Control:
    """Celery's ``app.control`` shape."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def revoke(self, task_id: str | Iterable[str], destination: str | Iterable[str] | None = None,
               terminate: bool = False, signal: str | None = None, **kwargs: Any) -> None:
        """Revoke one id or several: a queued task is never run, the REVOKED state is stored
        durably (a worker restart does not forget it). ``terminate=True`` also ends a running
        one where the pool can. Celery's ``destination``, ``signal`` and other broadcast
        options are accepted and ignored: the revocation is stored for every worker, and a
        thread is ended by an exception, not a signal."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        revoke(self.app, ids, terminate=terminate)

    def inspect(self, destination: str | Iterable[str] | None = None, timeout: float = 1.0,
                callback: Any = None, connection: Any = None, **options: Any) -> Inspect:
        """Read the worker registry (of every live worker, or those in ``destination``).

        Celery's ``timeout``, ``callback``, ``connection``, ``limit``... are accepted and
        ignored: the registry is read from the backend at once, no worker is asked."""
        return Inspect(self.app, destination)

    def ping(self, destination: str | Iterable[str] | None = None, timeout: float = 1.0,
             **kwargs: Any) -> list[dict[str, dict[str, str]]]:
        """Celery's ``app.control.ping()``: ``[{name: {"ok": "pong"}}, ...]``, one per live
        worker in the registry (an empty list when there is none)."""
        return [{name: {"ok": "pong"}} for name in Inspect(self.app, destination).workers()]

    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,  # noqa: PLR0917 - Celery's signature
                  destination: str | Iterable[str] | None = None, connection: Any = None,
                  reply: bool = False, timeout: float = 2.0, limit: int | None = None,
                  callback: Any = None, channel: Any = None, *, ttl: float = 30.0,
                  **extra: Any) -> dict[str, Any]:
        """Send ``command`` to every live worker (or those in ``destination``); with
        ``reply``, wait up to ``timeout`` seconds (or for ``limit`` replies) and return the
        replies by worker. Extra keywords are added to ``arguments``, as in Celery;
        ``connection``, ``callback`` and ``channel`` are accepted and ignored."""
        targets = list(self.inspect(destination).workers())
        command_id = new_id()
        body = encode_command(command_id, command, {**(arguments or {}), **extra}, ttl=ttl)
        for name in targets:
            self.app.broker.enqueue(control_queue(name), body)
        if not reply:
            return {name: None for name in targets}
        wanted = len(targets) if limit is None else min(limit, len(targets))
        prefix = f"{REPLY_PREFIX}{command_id}:"
        replies: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while len(replies) < wanted and time.monotonic() < deadline:
            time.sleep(0.1)
            for key, value in self.app.backend.entries(prefix).items():
                replies[key[len(prefix):]] = json.loads(value)
        return replies

    def shutdown(self, destination: str | Iterable[str] | None = None,
                 **kw: Any) -> dict[str, Any]:
        """Ask workers to stop gracefully."""
        return self.broadcast("shutdown", destination=destination, **kw)

    def rate_limit(self, task_name: str, rate_limit: str | float,
                   destination: str | Iterable[str] | None = None,
                   **kw: Any) -> dict[str, Any]:
        """Set ``task_name``'s rate limit (``"10/m"``, or tasks per second) on the workers,
        until they restart."""
        return self.broadcast("rate_limit", {"task": task_name, "rate": str(rate_limit)},
                              destination, **kw)

    def pool_grow(self, n: int = 1, destination: str | Iterable[str] | None = None,
                  **kw: Any) -> dict[str, Any]:
        """Add ``n`` executor threads to each worker."""
        return self.broadcast("pool_grow", {"n": n}, destination, **kw)

    def pool_shrink(self, n: int = 1, destination: str | Iterable[str] | None = None,
                    **kw: Any) -> dict[str, Any]:
        """Remove ``n`` executor threads from each worker (never below one)."""
        return self.broadcast("pool_shrink", {"n": n}, destination, **kw)
