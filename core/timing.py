"""When a message may run and when it expires: ``countdown``, ``eta`` and ``expires`` checked
and turned into epoch seconds, with one-line errors naming the argument.

As in Celery: ``countdown`` is a number of seconds; ``eta`` is a point in time (a datetime,
or an ISO 8601 string); ``expires`` is seconds from now or a point in time. Unlike Celery, a
naive datetime is read as the producer's local time (as ``datetime.timestamp()`` does), not
as the app's timezone setting; pass an aware datetime to be exact. ``eta`` may also be epoch
seconds. A number given as a string is an error: the caller's bug, caught at send time.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from conveyor.exceptions import TaskOptionError

#: Tolerated clock skew when checking that an eta or expires is not in the past.
CLOCK_SKEW = 1.0


def seconds(name: str, value: Any) -> float:
    """``value`` as a finite number of seconds, or :class:`TaskOptionError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, timedelta):
            hint = f"; for a timedelta give {name}=delta.total_seconds()"
        elif isinstance(value, str):
            hint = f"; convert the string first ({name}=float(...))"
        else:
            hint = ""
        raise TaskOptionError(f"{name} must be a number of seconds, not {type(value).__name__} "
                              f"{value!r}{hint}")
    if not math.isfinite(value):
        raise TaskOptionError(f"{name}={value} is not a finite number of seconds")
    return float(value)


def timestamp(name: str, value: Any) -> float:
    """A point in time as epoch seconds: a datetime (naive means local time), an ISO 8601
    string, or epoch seconds; else :class:`TaskOptionError` naming ``name``."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise TaskOptionError(f"{name}={value!r} is not an ISO 8601 date and time "
                                  "(e.g. 2030-01-31T12:00:00+00:00)") from None
    if isinstance(value, timedelta):
        raise TaskOptionError(f"{name} is a point in time, not a timedelta: for a delay give "
                              f"countdown=delta.total_seconds(), or {name}=now + delta")
    return seconds(name, value)


def due(countdown: Any, eta: Any, now: float) -> float | None:
    """When the message may run (epoch seconds), or None for at once."""
    if countdown is not None and eta is not None:
        raise TaskOptionError("give countdown or eta, not both")
    if countdown is not None:
        wait = seconds("countdown", countdown)
        if wait < 0:
            raise TaskOptionError(f"countdown={countdown} is negative: give the number of "
                                  "seconds to wait, 0 or more")
        return now + wait
    if eta is not None:
        at = timestamp("eta", eta)
        if at < now - CLOCK_SKEW:
            raise TaskOptionError(f"eta {eta} is in the past: use countdown=0 to run now")
        return at
    return None


def expiry(expires: Any, now: float) -> float | None:
    """When the message expires (epoch seconds), or None for never. A number is seconds from
    now; a datetime or ISO 8601 string is a point in time."""
    if expires is None:
        return None
    if isinstance(expires, datetime | str):
        at = timestamp("expires", expires)
        if at < now - CLOCK_SKEW:
            raise TaskOptionError(f"expires {expires} is in the past: the task would never run; "
                                  "give seconds from now or a future datetime")
        return at
    after = seconds("expires", expires)
    if after <= 0:
        raise TaskOptionError(f"expires={expires} is not in the future: the task would never "
                              "run; give seconds from now (more than 0) or a future datetime")
    return now + after
