"""How a retrying loop reports an outage: once when it starts, at most every ``every``
seconds while it lasts, and once when it ends. A loop that retries twice a second must not
write a line each time (an hour-long outage would be 7,200 lines per loop per worker).
"""

from __future__ import annotations

import logging
import time


class OutageLog:
    """Outage reporting for one loop (``what`` names it: "broker", "worker agent").

    Not thread-safe: each loop keeps its own. :meth:`failed` and :meth:`recovered` never
    raise; the clock is ``time.monotonic``.
    """

    def __init__(self, logger: logging.Logger, what: str, *, every: float = 30.0,
                 first_level: int = logging.WARNING) -> None:
        self._log = logger
        self.what = what
        self.every = every
        self._first_level = first_level
        self.since: float | None = None
        self._last = 0.0

    @property
    def failing(self) -> bool:
        """Whether the last call was :meth:`failed`."""
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        """One failed attempt: logged if it starts the outage or ``every`` seconds passed."""
        now = time.monotonic()
        if self.since is None:
            self.since = self._last = now
            self._log.log(self._first_level, "%s unavailable (%s): retrying with backoff",
                          self.what, exc)
        elif now - self._last >= self.every:
            self._last = now
            self._log.warning("%s still unavailable after %.0fs: %s", self.what,
                              now - self.since, exc)

    def recovered(self) -> None:
        """One successful attempt: ends the outage (logged) if there was one."""
        if self.since is not None:
            self._log.warning("%s reachable again after %.1fs", self.what,
                              time.monotonic() - self.since)
            self.since = None
