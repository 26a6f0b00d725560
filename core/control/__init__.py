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

    def __init__(self, app: Conveyor, destination: Iterable[str] | None = None) -> None:
        self.app = app
        self.destination = set(destination) if destination is not None else None

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

    def active(self) -> dict[str, list[dict[str, Any]]]:
        """Tasks running now, per worker (id, task, started)."""
        return {name: e.get("active", []) for name, e in self.workers().items()}

    def registered(self) -> dict[str, list[str]]:
        """Task names each worker knows."""
        return {name: e.get("registered", []) for name, e in self.workers().items()}

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters and settings per worker (everything but the task lists)."""
        return {name: {k: v for k, v in e.items() if k not in ("active", "registered")}
                for name, e in self.workers().items()}

    def ping(self) -> dict[str, dict[str, Any]]:
        """Workers whose heartbeat is in the registry, with its age in seconds."""
        now = time.time()
        return {name: {"ok": "pong", "age": now - float(e.get("heartbeat", now))}
                for name, e in self.workers().items()}


class Control:
    """Celery's ``app.control`` shape."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def revoke(self, task_id: str | Iterable[str], *, terminate: bool = False,
               signal: str | None = None) -> None:
        """Revoke one id or several: a queued task is never run, the REVOKED state is stored
        durably (a worker restart does not forget it). ``terminate=True`` also ends a running
        one where the pool can. ``signal`` is accepted for Celery compatibility and ignored."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        revoke(self.app, ids, terminate=terminate)

    def inspect(self, destination: Iterable[str] | None = None) -> Inspect:
        """Read the worker registry."""
        return Inspect(self.app, destination)

    def broadcast(self, command: str, *, arguments: dict[str, Any] | None = None,
                  destination: Iterable[str] | None = None, reply: bool = False,
                  timeout: float = 2.0, ttl: float = 30.0) -> dict[str, Any]:
        """Send ``command`` to every live worker (or those in ``destination``); with
        ``reply``, wait up to ``timeout`` seconds and return their replies by worker."""
        targets = list(self.inspect(destination).workers())
        command_id = new_id()
        body = encode_command(command_id, command, arguments or {}, ttl=ttl)
        for name in targets:
            self.app.broker.enqueue(control_queue(name), body)
        if not reply:
            return {name: None for name in targets}
        prefix = f"{REPLY_PREFIX}{command_id}:"
        replies: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while len(replies) < len(targets) and time.monotonic() < deadline:
            time.sleep(0.1)
            for key, value in self.app.backend.entries(prefix).items():
                replies[key[len(prefix):]] = json.loads(value)
        return replies

    def shutdown(self, **kw: Any) -> dict[str, Any]:
        """Ask workers to stop gracefully."""
        return self.broadcast("shutdown", **kw)

    def rate_limit(self, task_name: str, rate: str, **kw: Any) -> dict[str, Any]:
        """Set ``task_name``'s rate limit on the workers (until they restart)."""
        return self.broadcast("rate_limit", arguments={"task": task_name, "rate": rate}, **kw)

    def pool_grow(self, n: int = 1, **kw: Any) -> dict[str, Any]:
        """Add ``n`` executor threads to each worker."""
        return self.broadcast("pool_grow", arguments={"n": n}, **kw)

    def pool_shrink(self, n: int = 1, **kw: Any) -> dict[str, Any]:
        """Remove ``n`` executor threads from each worker (never below one)."""
        return self.broadcast("pool_shrink", arguments={"n": n}, **kw)
