"""Where a message goes and in which order: ``task_routes`` and priorities.

``task_routes`` takes Celery's forms: a mapping of task names or glob patterns (``"shop.*"``)
or compiled regular expressions to a route, a callable
``(name, args, kwargs, options, task=None, **kw) -> route | None``, or a list of these tried in
order. A route is a queue name or a mapping with ``queue`` and/or ``priority``.

Precedence of the queue, highest first: ``apply_async(queue=)``, the task's own ``queue=``,
the first matching route, ``task_default_queue``; of the priority: ``apply_async(priority=)``,
the task's ``priority=``, the route, ``task_default_priority``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from conveyor.exceptions import ConfigurationError, TaskOptionError

#: Priorities run from 0 (the default, lowest) to 9 (highest), as on AMQP.
MIN_PRIORITY, MAX_PRIORITY = 0, 9


def check_priority(priority: Any) -> int | None:
    """``priority`` as an int in 0..9 (None stays None); raises :class:`TaskOptionError`."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
            MIN_PRIORITY <= priority <= MAX_PRIORITY):
        raise TaskOptionError(f"priority={priority!r} is invalid: give an integer from "
                              f"{MIN_PRIORITY} (lowest, the default) to {MAX_PRIORITY} (highest)")
    return priority


Router = Callable[..., Any]


def _mapping_router(table: Mapping[Any, Any]) -> Router:
    exact: dict[str, Any] = {}
    patterns: list[tuple[re.Pattern[str], Any]] = []
    for key, target in table.items():
        if isinstance(key, re.Pattern):
            patterns.append((key, target))
        elif isinstance(key, str) and any(c in key for c in "*?["):
            regex = re.compile(fnmatch.translate(key))
            patterns.append((regex, target))
        elif isinstance(key, str):
            exact[key] = target
        else:
            raise ConfigurationError(f"task_routes key {key!r} is not a task name, a glob "
                                     "pattern or a compiled regular expression")

    def lookup(name: str, *_: Any, **__: Any) -> Any:
        if name in exact:
            return exact[name]
        for pattern, found in patterns:
            if pattern.match(name):
                return found
        return None

    return lookup


def routers(setting: Any) -> list[Router]:
    """The routers a ``task_routes`` setting describes, in the order they are tried."""
    if setting is None:
        return []
    items = setting if isinstance(setting, list | tuple) else [setting]
    found: list[Router] = []
    for item in items:
        if isinstance(item, Mapping):
            found.append(_mapping_router(item))
        elif callable(item):
            found.append(item)
        else:
            raise ConfigurationError(f"task_routes entry {item!r} is neither a mapping nor a "
                                     "callable")
    return found


def route(routes: Sequence[Router], name: str, args: Any, kwargs: Any, *,
          options: dict[str, Any], task: Any = None) -> dict[str, Any]:
    """The first route matching ``name`` as ``{"queue": ..., "priority": ...}`` (keys left
    out when the route does not say); ``{}`` when none matches."""
    for router in routes:
        found = router(name, args, kwargs, options, task=task)
        if found is None:
            continue
        if isinstance(found, str):
            return {"queue": found}
        if isinstance(found, Mapping):
            return {k: found[k] for k in ("queue", "priority") if found.get(k) is not None}
        raise ConfigurationError(f"route for {name!r} is {found!r}: give a queue name or a "
                                 "mapping with 'queue' and/or 'priority'")
    return {}
