"""The processes pool: N child worker processes, restarted when one dies.

Each child is a full ``conveyor worker --pool threads`` process that reserves from the broker
itself; the supervisor only starts, watches and signals them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

log = logging.getLogger("conveyor.worker")


class Supervisor:
    """Keeps ``processes`` children running ``child_args`` until told to stop."""

    def __init__(self, child_args: Sequence[str], *, processes: int) -> None:
        self.child_args = list(child_args)
        self.processes = processes
        self.children: list[subprocess.Popen[bytes] | None] = [None] * processes
        self._stop = threading.Event()
        self._signals = 0

    def _start(self, slot: int) -> None:
        cmd = [sys.executable, "-m", "conveyor", *self.child_args]
        # The child names its pool "processes" in the worker registry.
        env = {**os.environ, "CONVEYOR_WORKER_POOL_KIND": "processes"}
        self.children[slot] = subprocess.Popen(cmd, env=env)
        log.info("started worker process %d (pid %d)", slot, self.children[slot].pid)  # type: ignore[union-attr]

    def handle_signal(self, signum: int, _frame: object) -> None:
        """First SIGTERM/SIGINT: graceful stop of every child. Second: kill them at once."""
        self._signals += 1
        self._stop.set()
        hard = self._signals > 1
        for child in self.children:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGKILL if hard else signal.SIGTERM)

    def run(self) -> int:
        """Run until a signal stops us; returns 0 when every child exited cleanly."""
        signal.signal(signal.SIGTERM, self.handle_signal)
        signal.signal(signal.SIGINT, self.handle_signal)
        for slot in range(self.processes):
            self._start(slot)
        backoff = [0.0] * self.processes
        while not self._stop.wait(0.2):
            for slot, child in enumerate(self.children):
                if child is None or child.poll() is None or self._stop.is_set():
                    continue
                log.error("worker process %d (pid %d) died with code %s; restarting",
                          slot, child.pid, child.returncode)
                # Back off when a child keeps dying at once (e.g. the app fails to import).
                backoff[slot] = min(max(backoff[slot] * 2, 0.5), 10.0)
                time.sleep(backoff[slot])
                self._start(slot)
        codes = []
        for child in self.children:
            if child is not None:
                codes.append(child.wait())
        # A child ended by our SIGTERM itself (-SIGTERM) got it while still starting, before
        # ``conveyor worker`` installed its handler, so it had reserved nothing: a clean stop.
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1
