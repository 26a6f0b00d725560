"""Settings: Celery's lowercase names where the meaning is the same.

Precedence, lowest first: defaults, ``CONVEYOR_*`` environment variables, then whatever the
application sets (constructor keywords, ``config_from_object``, ``app.conf.update``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from conveyor.exceptions import ConfigurationError, ImproperlyConfiguredError

DEFAULT_URL = "sqlite:///conveyor.db"


@dataclass
class Settings:
    """All settings with their defaults. Times are seconds (floats)."""

    broker_url: str = DEFAULT_URL
    result_backend: str = DEFAULT_URL
    task_default_queue: str = "default"
    task_serializer: str = "json"
    result_serializer: str = "json"
    accept_content: list[str] = field(default_factory=lambda: ["json"])
    task_signing_key: str | None = None
    #: How long records live in the backend; None keeps them forever.
    result_expires: float | None = 86400.0
    #: Write a PENDING record at send time, so a queued task is told apart from an unknown id.
    task_store_pending: bool = True
    #: Times a send is retried when the broker connection was lost.
    task_publish_retries: int = 3
    task_track_started: bool = True
    #: Ack after the outcome is stored (at-least-once). False acks before running (at-most-once).
    task_acks_late: bool = True
    task_default_max_retries: int | None = 3
    task_default_retry_delay: float = 180.0
    #: Dead-letter a task that fails without retrying, too (exhausted retries always are).
    task_dead_letter_failures: bool = False
    #: The broker lease; the worker's heartbeat extends it while a task runs.
    broker_visibility_timeout: float = 30.0
    worker_concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    worker_pool: str = "threads"
    #: Messages held per thread, running ones included (as Celery). Beyond one per thread
    #: only while tasks average under 0.1 s, so long tasks are never hoarded.
    worker_prefetch_multiplier: int = 4
    worker_heartbeat_interval: float | None = None
    worker_shutdown_grace: float = 60.0
    worker_poll_wait: float = 1.0
    #: How often a worker purges expired results on backends that don't expire natively.
    result_cleanup_interval: float = 3600.0

    def update(self, values: dict[str, Any]) -> None:
        """Set known settings from ``values``; unknown names raise with a suggestion."""
        names = {f.name for f in fields(self)}
        aliases = {"broker": "broker_url", "backend": "result_backend",
                   "backend_url": "result_backend", "result_backend_url": "result_backend"}
        for key, value in values.items():
            name = aliases.get(key.lower(), key.lower())
            if name not in names:
                import difflib

                close = difflib.get_close_matches(name, sorted(names), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(f"unknown setting {key!r}{hint}")
            setattr(self, name, _coerce(name, value, getattr(self, name)))

    def from_environ(self, environ: dict[str, str] | None = None) -> None:
        """Read ``CONVEYOR_BROKER_URL``, ``CONVEYOR_BACKEND_URL`` and ``CONVEYOR_<SETTING>``."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        if "CONVEYOR_BROKER_URL" in env:
            values["broker_url"] = env.pop("CONVEYOR_BROKER_URL")
        if "CONVEYOR_BACKEND_URL" in env:
            values["result_backend"] = env.pop("CONVEYOR_BACKEND_URL")
        names = {f.name for f in fields(self)}
        for key, value in env.items():
            if key.startswith("CONVEYOR_") and key[9:].lower() in names:
                values[key[9:].lower()] = value
        self.update(values)

    def check(self) -> list[str]:
        """Problems where settings contradict each other (empty when consistent)."""
        problems = []
        lease, beat = self.broker_visibility_timeout, self.heartbeat_interval
        if beat >= lease:
            problems.append(f"worker_heartbeat_interval ({beat:g}s) must be shorter than "
                            f"broker_visibility_timeout ({lease:g}s), or leases lapse")
        if self.task_serializer not in self.accept_content:
            problems.append(f"task_serializer {self.task_serializer!r} is not in accept_content")
        if self.result_serializer not in self.accept_content:
            problems.append(f"result_serializer {self.result_serializer!r} is not in "
                            "accept_content")
        if self.worker_concurrency < 1:
            problems.append("worker_concurrency must be at least 1")
        if self.worker_pool not in {"threads", "processes"}:
            problems.append("worker_pool must be 'threads' or 'processes'")
        if self.result_expires is not None and self.result_expires <= 0:
            problems.append("result_expires must be positive (or None to keep forever)")
        return problems

    def validate(self) -> None:
        """Raise :class:`ImproperlyConfiguredError` listing every contradiction."""
        problems = self.check()
        if problems:
            raise ImproperlyConfiguredError("; ".join(problems))

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between lease extensions: the setting, or a third of the lease."""
        if self.worker_heartbeat_interval is not None:
            return self.worker_heartbeat_interval
        return self.broker_visibility_timeout / 3


def _coerce(name: str, value: Any, current: Any) -> Any:
    """Turn environment strings into the setting's type."""
    if not isinstance(value, str):
        return value
    try:
        if isinstance(current, bool):
            if value.lower() in {"1", "true", "yes", "on"}:
                return True
            if value.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float) or name in {"result_expires", "worker_heartbeat_interval"}:
            return None if value.lower() in {"none", ""} else float(value)
        if isinstance(current, list):
            return [v.strip() for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigurationError(f"setting {name}={value!r} is not a valid "
                                 f"{type(current).__name__}") from exc
    return value
