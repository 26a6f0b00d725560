"""Cluster-wide rate limits: ``rate_limit="100/m"`` holds across every worker together.

Time is cut into windows, each allowing ``per_window`` runs; a window is one set in the
backend's coordination area (``join``), holding the ids of the tasks that asked to run in it.
``join`` is atomic and idempotent on every backend, so workers never over-admit by racing, and
a redelivered task is never counted twice in a window (its id is already in the set).
Windows are short (about a second, or one run long for slow rates), so ``100/m`` runs two
tasks every 1.2 s rather than a burst of 100 each minute.

A task over the limit is told how long to wait: until the window where its place in the line
falls. The runner sends it again with that delay, so a limited worker neither spins nor holds
the message, nothing is lost, and no failed attempt is counted.

Windows follow the workers' clocks (epoch seconds): keep them in sync (NTP), as for eta.
"""

from __future__ import annotations

import math
import random
import re
import time
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smhd]))?\s*$")


def parse_rate(rate: str | float | None) -> tuple[int, float] | None:
    """``"100/m"`` as ``(per_window, window_seconds)``; None for no limit (None, ``"0"``).

    Accepts Celery's forms: ``"N/s"``, ``"N/m"``, ``"N/h"``, a bare number (per second).
    Raises :class:`ConfigurationError` for anything else.
    """
    if rate is None:
        return None
    match = _RATE.match(str(rate))
    if match is None:
        raise ConfigurationError(f"rate_limit={rate!r} is invalid: give runs per period, "
                                 "e.g. '100/m', '10/s', '2/h'")
    count = float(match.group(1))
    if count <= 0:
        return None
    period = _UNITS[match.group(2) or "s"]
    # About a second per window (at least one run in it): evenly spread, few backend keys.
    per_window = max(1, round(count * 1.0 / period))
    return per_window, per_window * period / count


class RateLimiter:
    """Asks the backend whether a task may run now. Thread-safe (holds no state)."""

    #: Key prefix in the coordination area.
    PREFIX = "ratelimit:"

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def delay_for(self, task: Task[Any, Any], task_id: str, *,
                  now: float | None = None) -> float:
        """0 when ``task_id`` may run now under ``task``'s rate, else seconds to wait.

        One ``join`` round trip. Raises :class:`ConfigurationError` when the backend has no
        coordination primitives."""
        rate = task.rate
        if rate is None:
            return 0.0
        backend = self.app.backend
        if not backend.capabilities.coordination:
            raise ConfigurationError(
                f"rate_limit on {task.name} needs a result backend with coordination "
                f"primitives; {type(backend).__name__} has none")
        per_window, window = rate
        now = time.time() if now is None else now
        index = math.floor(now / window)
        key = f"{self.PREFIX}{task.name}:{window:g}:{index}"
        count = backend.join(key, task_id, ttl=window * 2 + 1)
        if count <= per_window:
            return 0.0
        # Place in line beyond this window -> which later window it falls in; a little
        # jitter so a crowd sent to the same window does not arrive in one instant.
        later = (count - per_window - 1) // per_window
        start = (index + 1 + later) * window
        return max(0.001, start - now) + random.uniform(0, min(0.05, window / 10))
