"""The worker's agent thread: its registry entry, the control channel, revocations.

Every ``worker_heartbeat_interval`` the worker writes its entry ``worker:<hostname>`` with
an expiry of three intervals, so a worker killed with SIGKILL drops out of the registry
within three heartbeats; a graceful stop deletes it at once. Twice a second it refreshes the
revoked-ids cache (ending running tasks revoked with ``terminate=True``), once a second it
reads its control queue: on a broker declaring ``idle_wait`` (billed per request: SQS) a thread
of its own long-polls the control queue instead, one request per ``idle_wait`` while idle.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

from conveyor.control.channel import REPLY_PREFIX, control_queue, decode_command
from conveyor.control.revoke import RevokedCache
from conveyor.exceptions import ConfigurationError, ConveyorError, MessageDecodeError
from conveyor.message import Message
from conveyor.outage import OutageLog
from conveyor.ratelimit import parse_rate

if TYPE_CHECKING:
    from conveyor.worker.consumer import Consumer

log = logging.getLogger("conveyor.worker")

REGISTRY_PREFIX = "worker:"
#: Seconds between reads of the revoked ids, and of the control queue.
TICK = 0.5
COMMAND_TICK = 1.0


@functools.cache
def _version() -> str:
    try:
        return metadata.version("conveyor")
    except metadata.PackageNotFoundError:
        return "unknown"


class WorkerAgent:
    """Runs beside a :class:`Consumer`; ``run`` until the consumer stops."""

    def __init__(self, consumer: Consumer, *, pool: str | None = None) -> None:
        self.consumer = consumer
        self.app = consumer.app
        self.pool = pool or os.environ.get("CONVEYOR_WORKER_POOL_KIND", "threads")
        self.started = time.time()
        self.revoked = RevokedCache(self.app)
        self.queue = control_queue(consumer.hostname)
        self.key = REGISTRY_PREFIX + consumer.hostname
        self._stop = threading.Event()
        #: Without coordination primitives there is no registry nor durable revoke cache.
        self.enabled = False

    # -- registry -------------------------------------------------------------------------
    def entry(self) -> dict[str, Any]:
        """What this worker publishes about itself."""
        c = self.consumer
        now = time.time()
        return {
            "hostname": c.hostname, "host": socket.gethostname(), "pid": os.getpid(),
            "queues": list(c.queues), "pool": self.pool, "concurrency": c.concurrency,
            "version": _version(), "started": self.started, "heartbeat": now,
            "active": [{"id": task_id, "task": name, "started": started}
                       for task_id, (name, started, _) in list(c.runner.active.items())],
            "reserved": self._reserved(),
            "processed": c.processed, "failed": c.runner.failed,
            "registered": sorted(self.app.tasks),
            "rate_limits": {name: t.rate_limit for name, t in self.app.tasks.items()
                            if t.rate_limit},
        }

    def _reserved(self) -> list[dict[str, Any]]:
        """Messages held but not started (prefetched), as Celery's ``inspect reserved``."""
        c = self.consumer
        running = c.runner.active
        reserved = []
        for res in c.held():
            try:
                msg = Message.decode(res.body, self.app.signer)
            except MessageDecodeError:
                continue  # the runner dead-letters it; nothing to show meanwhile
            if msg.id not in running:
                reserved.append({"id": msg.id, "task": msg.task, "queue": res.queue,
                                 "delivery": res.attempts})
        return reserved

    def register(self) -> None:
        """Write this worker's entry (expiring after three heartbeats)."""
        ttl = 3 * self.app.conf.heartbeat_interval
        self.app.backend.put_entry(self.key, json.dumps(self.entry()).encode(), ttl=ttl)

    def start(self) -> None:
        """First registration and revoked ids, before the worker consumes; then the thread."""
        self.enabled = self.app.backend.capabilities.coordination
        limited = sorted(name for name, t in self.app.tasks.items() if t.rate is not None)
        if limited and not self.enabled:
            raise ConfigurationError(
                f"tasks {', '.join(limited)} have a rate_limit, which needs a result backend "
                f"with coordination primitives; {type(self.app.backend).__name__} has none")
        if self.enabled:
            try:
                self.revoked.refresh()
                self.register()
            except ConveyorError as exc:
                log.warning("could not register the worker yet: %s", exc)
        threading.Thread(target=self.run, name="conveyor-agent", daemon=True).start()
        if self._long_polls:
            threading.Thread(target=self._command_loop, name="conveyor-agent-commands",
                             daemon=True).start()

    @functools.cached_property
    def _long_polls(self) -> bool:
        return bool(self.app.broker.capabilities.idle_wait)

    def stop(self) -> None:
        """Stop the thread and remove the registry entry."""
        self._stop.set()
        if self._long_polls:
            self.app.broker.wake()
        if self.enabled:
            try:
                self.app.backend.delete_entry(self.key)
            except ConveyorError as exc:
                log.warning("could not remove the worker's registry entry: %s", exc)

    def run(self) -> None:
        interval = self.app.conf.heartbeat_interval
        last_beat = last_read = time.monotonic()
        outage = OutageLog(log, "the worker agent's server")
        while not self._stop.wait(min(TICK, interval)):
            try:
                now = time.monotonic()
                if self.enabled:
                    self.revoked.refresh()
                    self._terminate_revoked()
                    if now - last_beat >= interval:
                        last_beat = now
                        self.register()
                # Reading the control queue is a claim (a write on SQL): once a second.
                if not self._long_polls and now - last_read >= COMMAND_TICK:
                    last_read = now
                    self._read_commands()
                outage.recovered()
            except ConveyorError as exc:
                outage.failed(exc)
            except Exception:
                log.exception("worker agent failed a round; retrying")

    def _terminate_revoked(self) -> None:
        runner = self.consumer.runner
        for task_id in self.revoked.to_terminate(list(runner.active)):
            if runner.terminate(task_id):
                log.warning("terminated revoked task %s", task_id)

    # -- control channel ------------------------------------------------------------------
    def _command_loop(self) -> None:
        """Long polls of the control queue until stopped (see the module docstring)."""
        wait = self.app.broker.capabilities.idle_wait or COMMAND_TICK
        pause = 0.1
        outage = OutageLog(log, "the worker agent's control queue")
        while not self._stop.is_set():
            try:
                self._read_commands(wait)
                outage.recovered()
                pause = 0.1
            except ConveyorError as exc:
                outage.failed(exc)
                self._stop.wait(pause)
                pause = min(pause * 2, 5.0)
            except Exception:
                log.exception("worker agent failed to read its control queue; retrying")
                self._stop.wait(1.0)

    def _read_commands(self, wait: float = 0.0) -> None:
        broker = self.app.broker
        for res in broker.reserve([self.queue], lease=30.0, wait=wait, limit=10):
            command = decode_command(res.body)
            if command is None:
                log.warning("ignoring an expired or malformed control message %s",
                            res.message_id)
            else:
                try:
                    reply = self.execute(command["command"], command["arguments"])
                except Exception as exc:
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                if self.enabled:
                    self.app.backend.put_entry(
                        f"{REPLY_PREFIX}{command['id']}:{self.consumer.hostname}",
                        json.dumps(reply).encode(), ttl=60.0)
            broker.ack(res)

    def execute(self, command: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Carry out one control command; returns the reply."""
        c = self.consumer
        log.info("control command %s %s", command, arguments)
        if command == "shutdown":
            c.stop()
            return {"ok": "shutting down"}
        if command == "rate_limit":
            task = self.app.tasks.get(str(arguments.get("task")))
            if task is None:
                return {"error": f"unknown task {arguments.get('task')!r}"}
            rate = arguments.get("rate")
            task.rate = parse_rate(rate)
            task.rate_limit = str(rate) if task.rate is not None else None
            return {"ok": f"rate limit of {task.name} set to {rate}"}
        if command in ("pool_grow", "pool_shrink"):
            n = int(arguments.get("n", 1))
            size = c.resize(n if command == "pool_grow" else -n)
            return {"ok": f"pool size is now {size}"}
        return {"ok": "pong"}
