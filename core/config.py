"""Settings: Celery's lowercase names where the meaning is the same.

Precedence, highest first: the command line (``--broker``, ``--backend``), the environment
(``CONVEYOR_BROKER_URL``, ``CONVEYOR_BACKEND_URL``, ``CONVEYOR_<SETTING>``, read when the app
is created), what the code sets (constructor keywords, ``config_from_object``,
``app.conf.update``, ``app.conf.KEY = value``), then the defaults. ``conf.source(name)`` says
which layer a value came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
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
    #: With signing: refuse (dead-letter) a signed message more than this many seconds older
    #: than its signature or its eta, so a captured message cannot be replayed later.
    task_signing_max_age: float | None = None
    #: How long records live in the backend; None keeps them forever.
    result_expires: float | None = 86400.0
    #: Write a PENDING record at send time, so a queued task is told apart from an unknown id.
    task_store_pending: bool = True
    task_track_started: bool = True
    #: Keep each task's arguments in its record (as Celery's ``result_extended``), so the
    #: dashboard shows them and can re-send any failed task; ``argsrepr``/``kwargsrepr``
    #: replace what is shown, not what is stored.
    result_extended: bool = False
    #: The longest a producer's interpreter exit waits for PENDING records to be written
    #: (seconds); what is still unwritten then is dropped, and logged once.
    task_pending_exit_timeout: float = 3.0
    #: Ack after the outcome is stored (at-least-once). False acks before running (at-most-once).
    task_acks_late: bool = True
    task_default_max_retries: int | None = 3
    task_default_retry_delay: float = 180.0
    #: Dead-letter a task that fails without retrying, too (exhausted retries always are).
    task_dead_letter_failures: bool = False
    #: Run delay/apply_async and whole workflows in the calling process (users' tests).
    task_always_eager: bool = False
    #: In eager runs, raise a task's exception at once instead of returning it in the result.
    task_eager_propagates: bool = False
    #: Deliveries after which a message that never finished goes to the dead-letter queue
    #: with its attempt history instead of being delivered again (0: no limit).
    broker_max_deliveries: int = 20
    #: Seconds a send keeps retrying a lost broker connection before raising: long enough
    #: to ride out a broker restart of a few seconds.
    broker_publish_retry_timeout: float = 10.0
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
    #: Routes by task name, glob or callable (see :mod:`conveyor.routing`).
    task_routes: Any = None
    #: Priority (0..9) of messages whose task and route give none.
    task_default_priority: int | None = None
    #: Hard and soft time limits (seconds) of tasks that set none.
    task_time_limit: float | None = None
    task_soft_time_limit: float | None = None

    #: The layers set so far: source -> setting -> (value, label), see :data:`PRECEDENCE`.
    _layers: dict[str, dict[str, tuple[Any, str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    #: Keys that are not settings (kept, as Celery keeps them, for the application's use).
    _extra: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ready", True)

    def __repr__(self) -> str:
        """Every setting, with URL passwords and the signing key masked: a repr ends up in
        logs and tracebacks."""
        from conveyor.url import mask_password

        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name in ("broker_url", "result_backend") and isinstance(value, str):
                value = mask_password(value)
            elif f.name == "task_signing_key" and value is not None:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def __setattr__(self, name: str, value: Any) -> None:
        # ``conf.KEY = value`` is code setting KEY: it takes the code layer's place, so a
        # value from the environment or the command line still wins.
        if name in SETTING_NAMES and self.__dict__.get("_ready"):
            self.update({name: value})
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get("_extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"no setting {name!r}{_did_you_mean(name)}")

    def __getitem__(self, key: str) -> Any:
        name = _canonical(key)
        if name in SETTING_NAMES:
            return getattr(self, name)
        return self._extra[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (_canonical(key) in SETTING_NAMES or key in self._extra)

    def get(self, key: str, default: Any = None) -> Any:
        """``conf[key]``, or ``default`` when it is neither a setting nor a key set earlier."""
        if key not in self:
            return default
        return self[key]

    def update(self, values: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
               /, **kw: Any) -> None:
        """Set settings from a mapping and/or keywords, as ``dict.update`` (and Celery) do.

        This is the code layer: a name the environment or the command line also sets keeps
        their value (see :data:`PRECEDENCE`). Celery's lowercase names; ``broker`` and
        ``backend`` are accepted as aliases. A key that is no setting is kept (readable as
        ``conf.KEY``) with a warning naming the nearest setting.
        """
        self.set_layer("code", {**dict(values or {}), **kw})

    def set_layer(self, source: str, values: Mapping[str, Any], *,
                  label: str | None = None) -> None:
        """Set ``values`` in one layer of :data:`PRECEDENCE` (``"code"``, ``"environment"``
        or ``"command line"``); ``label`` says where they came from, for
        :meth:`source` (default: the layer's name)."""
        if source not in PRECEDENCE:
            raise ValueError(f"source must be one of {', '.join(PRECEDENCE)}")
        layer = self._layers.setdefault(source, {})
        for key, value in values.items():
            name = _canonical(key)
            if name not in SETTING_NAMES:
                import warnings

                from conveyor.exceptions import ConfigurationWarning

                warnings.warn(f"unknown setting {key!r}{_did_you_mean(name)}: kept in app.conf "
                              "but nothing in conveyor reads it", ConfigurationWarning,
                              stacklevel=3)
                self._extra[key] = value
                continue
            layer[name] = (_coerce(name, value), label or source)
            self._apply(name)

    def _apply(self, name: str) -> None:
        for source in reversed(PRECEDENCE):
            if name in self._layers.get(source, {}):
                object.__setattr__(self, name, self._layers[source][name][0])
                return
        default = _DEFAULTS[name]
        object.__setattr__(self, name, default() if callable(default) else default)

    def source(self, name: str) -> str:
        """Where a setting's value came from: ``"default"``, ``"code"``,
        ``"environment (CONVEYOR_BROKER_URL)"``, ``"command line (--broker)"``."""
        for source in reversed(PRECEDENCE):
            if name in self._layers.get(source, {}):
                return self._layers[source][name][1]
        return "default"

    def from_environ(self, environ: Mapping[str, str] | None = None) -> None:
        """Read ``CONVEYOR_BROKER_URL``, ``CONVEYOR_BACKEND_URL`` and ``CONVEYOR_<SETTING>``
        into the environment layer, which beats what the code sets."""
        env = os.environ if environ is None else environ
        for var, name in environment_variables().items():
            if var in env:
                self.set_layer("environment", {name: env[var]}, label=f"environment ({var})")

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


PRECEDENCE = ("code", "environment", "command line")
"""Layers of configuration, lowest first (defaults lie below them all): the environment beats
the code, as Celery's ``CELERY_BROKER_URL`` does, so one image runs anywhere."""

SETTING_NAMES = frozenset(f.name for f in fields(Settings) if f.init)
_DEFAULTS: dict[str, Any] = {
    f.name: (f.default_factory if f.default is MISSING else f.default)
    for f in fields(Settings) if f.init}
_ALIASES = {"broker": "broker_url", "backend": "result_backend",
            "backend_url": "result_backend", "result_backend_url": "result_backend"}


def environment_variables() -> dict[str, str]:
    """Every environment variable read, mapped to the setting it sets."""
    names = {f"CONVEYOR_{name.upper()}": name for name in sorted(SETTING_NAMES)}
    names["CONVEYOR_BACKEND_URL"] = "result_backend"
    return names


def _canonical(key: str) -> str:
    return _ALIASES.get(key.lower(), key.lower())


def _did_you_mean(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name.lower(), sorted(SETTING_NAMES), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(name: str, value: Any) -> Any:
    """Turn environment strings into the setting's type (read from its annotation)."""
    if not isinstance(value, str):
        return value
    kind = str(_TYPES[name])
    try:
        if kind.endswith("| None") and value.lower() in {"none", ""}:
            return None
        if kind.startswith("bool"):
            if value.lower() in {"1", "true", "yes", "on"}:
                return True
            if value.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("list"):
            return [v.strip() for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigurationError(f"setting {name}={value!r} is not a valid "
                                 f"{kind.split(' ', maxsplit=1)[0]}") from exc
    return value


_TYPES = {f.name: f.type for f in fields(Settings) if f.init}
