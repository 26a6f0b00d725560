"""The application object: settings, the task registry, and sending."""

from __future__ import annotations

import importlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from conveyor import signals, timing
from conveyor.backend import StoredRecord
from conveyor.config import Settings
from conveyor.exceptions import ConveyorError, TaskOptionError
from conveyor.ids import check_task_id, new_id
from conveyor.message import Message
from conveyor.pending import PendingWriter
from conveyor.record import TaskRecord
from conveyor.registry import backend_from_url, broker_from_url
from conveyor.serialization import Codec, Signer, quote_json
from conveyor.task import Task
from conveyor.url import mask_password

if TYPE_CHECKING:
    from conveyor.backend import ResultBackend
    from conveyor.broker import Broker
    from conveyor.result import AsyncResult

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")

#: Tolerated clock skew when checking that an eta or expires is not in the past.
CLOCK_SKEW = 1.0


def to_timestamp(value: datetime | float) -> float:
    """Epoch seconds from a datetime (naive means local time) or a number."""
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _check_sizes(batch: list[Outgoing], bodies: list[bytes], limit: int, hint: str) -> None:
    for o, body in zip(batch, bodies, strict=True):
        if len(body) > limit:
            raise TaskOptionError(
                f"message of task {o.message.task} is {len(body):,} bytes; the broker takes at "
                f"most {limit:,} (max_message_size): {hint}")


def _check_group(group: Any) -> str:
    """``message_group`` as SQS takes a MessageGroupId: 1-128 printable ASCII characters."""
    if (not isinstance(group, str) or not 1 <= len(group) <= 128
            or not all("!" <= c <= "~" for c in group)):
        raise TaskOptionError(f"message_group={group!r} is invalid: give a string of 1 to 128 "
                              "printable ASCII characters without spaces")
    return group


#: The fields :meth:`Conveyor.build_many` gives each message, and the others (copied from
#: the batch's first message), in Message's order.
_OWN_FIELDS = ("id", "task", "args", "kwargs", "content_type")
_SHARED_FIELDS = tuple(f.name for f in fields(Message) if f.name not in _OWN_FIELDS)
#: Whether Message's fields start with _OWN_FIELDS, so a message can be built positionally.
_POSITIONAL = tuple(f.name for f in fields(Message))[:5] == _OWN_FIELDS


@dataclass(slots=True)
class Outgoing:
    """A message ready to publish: the queue it goes to and its delay in seconds."""

    message: Message
    queue: str
    delay: float

    @property
    def priority(self) -> int:
        """The message's priority (0..9); it travels with the message through retries."""
        return self.message.priority


class Conveyor:
    """A conveyor application.

    ``Conveyor("shop", broker="redis://...", backend="postgresql+psycopg://...")``; with
    nothing configured both are one SQLite file, ``conveyor.db``, in the working directory.
    Other settings are keyword arguments with Celery's names (see :class:`Settings`).
    """

    def __init__(self, main: str | None = None, *, broker: str | None = None,
                 backend: str | None = None, **settings: Any) -> None:
        self.main = main
        self.conf = Settings()
        self.conf.from_environ()
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["result_backend"] = backend
        self.conf.update(settings)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._lock = threading.Lock()
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._codecs: tuple[Codec, Codec, Signer] | None = None
        self._pending: PendingWriter | None = None
        # Last: registering the shared tasks on this app needs the app complete.
        from conveyor.shared import adopt

        adopt(self)

    def __repr__(self) -> str:
        # mask_password, not URL(): a repr must not raise on a URL that cannot be parsed.
        return (f"<Conveyor {self.main or '__main__'} broker="
                f"{mask_password(str(self.conf.broker_url))} "
                f"backend={mask_password(str(self.conf.result_backend))}>")

    def set_current(self) -> None:
        """Make this the app that ``shared_task`` tasks act on (the newest app is, already)."""
        from conveyor.shared import set_current

        set_current(self)

    # -- configuration --------------------------------------------------------------------
    def config_from_object(self, obj: object | str, silent: bool = False, force: bool = False,
                           namespace: str | None = None) -> None:
        """Load settings from a module, a ``"module"`` or ``"module:attr"`` path, a class, an
        object or a mapping, as code (the environment still wins).

        Lowercase public names are settings; with ``namespace="CONVEYOR"`` (Celery's Django
        style) only ``CONVEYOR_``-prefixed names are read, the prefix dropped. Closes existing
        connections so new URLs take effect. ``silent=True``: a path that cannot be imported
        loads nothing instead of raising (Celery's). ``force`` is Celery's and changes nothing:
        settings are always loaded at once.
        """
        if isinstance(obj, str):
            module_name, _, attr = obj.partition(":")
            try:
                obj = importlib.import_module(module_name)
                if attr:
                    obj = getattr(obj, attr)
            except (ImportError, AttributeError):
                if silent:
                    return
                raise
        names = obj.keys() if isinstance(obj, dict) else dir(obj)
        values = {}
        for name in names:
            value = obj[name] if isinstance(obj, dict) else getattr(obj, name)
            key = name
            if namespace is not None:
                if not name.startswith(f"{namespace}_"):
                    continue
                key = name[len(namespace) + 1:].lower()
            elif not name.islower() or name.startswith("_"):
                continue
            if isinstance(obj, dict) or not (callable(value) or
                                             isinstance(value, type(importlib))):
                values[key] = value
        self.conf.update(values)
        self.close()

    @property
    def broker(self) -> Broker:
        """The broker driver, connected on first use."""
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = broker_from_url(self.conf.broker_url)
        return self._broker

    @property
    def backend(self) -> ResultBackend:
        """The result backend driver, connected on first use."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = backend_from_url(self.conf.result_backend)
        return self._backend

    def _codec_triplet(self) -> tuple[Codec, Codec, Signer]:
        if self._codecs is None:
            accept = list(self.conf.accept_content)
            self._codecs = (Codec(serializer=self.conf.task_serializer, accept=accept),
                            Codec(serializer=self.conf.result_serializer, accept=accept),
                            Signer(self.conf.task_signing_key,
                                   max_age=self.conf.task_signing_max_age))
        return self._codecs

    @property
    def task_codec(self) -> Codec:
        """Encodes task arguments."""
        return self._codec_triplet()[0]

    @property
    def result_codec(self) -> Codec:
        """Encodes task results."""
        return self._codec_triplet()[1]

    @property
    def signer(self) -> Signer:
        """Signs and verifies messages (a no-op without ``task_signing_key``)."""
        return self._codec_triplet()[2]

    def close(self) -> None:
        """Write queued PENDING records, close broker and backend connections; they reopen
        on next use."""
        if self._pending is not None:
            self._pending.close()
            self._pending = None
        with self._lock:
            for driver in (self._broker, self._backend):
                if driver is not None:
                    driver.close()
            self._broker = self._backend = None
            self._codecs = None

    # -- tasks ----------------------------------------------------------------------------
    # The overloads carry the function's parameters and return type to the task (``delay``
    # takes what the function takes; ``get()`` returns what it returns); a bound task's
    # first parameter (``self``) is not part of them.
    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...
    @overload
    def task(self, fn: None = None, *, name: str | None = None, bind: Literal[True],
             base: type[Task[Any, Any]] | None = None,
             **options: Any) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...
    @overload
    def task(self, fn: None = None, *, name: str | None = None, bind: Literal[False] = False,
             base: type[Task[Any, Any]] | None = None,
             **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
             bind: bool = False, base: type[Task[Any, Any]] | None = None,
             **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(bind=True, ...)``.

        Options: ``max_retries``, ``default_retry_delay``, ``autoretry_for``,
        ``dont_autoretry_for``, ``retry_kwargs``, ``retry_backoff``, ``retry_backoff_max``,
        ``retry_jitter``, ``queue``, ``priority``, ``expires``, ``ignore_result``,
        ``acks_late``, ``rate_limit``, ``time_limit``, ``soft_time_limit``,
        ``dead_letter_failures``. ``base``: a :class:`Task` subclass whose hooks
        (``on_success``, ``on_failure``, ``on_retry``, ``after_return``) and class-attribute
        options the task takes.
        """
        cls = base or Task
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"base={cls!r} is not a subclass of conveyor.Task")
        options = {**cls.class_options(), **options}

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            module = func.__module__
            if module == "__main__" and self.main:
                # As Celery: a module run as a script names its tasks after the app, so they
                # match the names a worker importing that module registers.
                module = self.main
            task_name = name or f"{module}.{func.__qualname__}"
            task: Task[Any, Any] = cls(self, func, name=task_name, bind=bind, **options)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def register_task(self, task: type[Task[Any, Any]] | Task[Any, Any]) -> Task[Any, Any]:
        """Register a class-based task (a :class:`Task` subclass defining ``run``, or an
        instance of one) and return it. Its name is its ``name`` class attribute, else
        ``module.ClassName``."""
        if isinstance(task, type):
            cls = task
            name = vars(cls).get("name") or f"{cls.__module__}.{cls.__qualname__}"
            task = cls(self, None, name=name, **cls.class_options())
        self.tasks[task.name] = task
        return task

    @property
    def routers(self) -> list[Any]:
        """The routers of ``task_routes`` (rebuilt when the setting is replaced)."""
        setting = self.conf.task_routes
        cached = self.__dict__.get("_routers")
        if cached is None or cached[0] is not setting:
            from conveyor.routing import routers

            cached = (setting, routers(setting))
            self.__dict__["_routers"] = cached
        return cached[1]

    @property
    def control(self) -> Any:
        """Revoke tasks, inspect and command workers (``app.control.revoke(id)``,
        ``app.control.inspect().active()``); see :mod:`conveyor.control`."""
        from conveyor.control import Control

        return Control(self)

    # -- sending --------------------------------------------------------------------------
    def build_message(self, name: str, args: Iterable[Any] | None = None,
                      kwargs: dict[str, Any] | None = None, *,
                      countdown: float | None = None,
                      eta: datetime | str | float | None = None,
                      expires: datetime | str | float | None = None, queue: str | None = None,
                      task_id: str | None = None, max_retries: int | None = None,
                      priority: int | None = None, argsrepr: str | None = None,
                      kwargsrepr: str | None = None, message_group: str | None = None,
                      **extra: Any) -> Outgoing:
        """Validate options and encode arguments into an :class:`Outgoing` message.

        ``countdown``: seconds to wait; ``eta``: when to run (a datetime, naive meaning local
        time, an ISO 8601 string, or epoch seconds); ``expires``: seconds from now or a point
        in time (see :mod:`conveyor.timing`); ``argsrepr``/``kwargsrepr``: what logs and the
        dashboard show instead of the arguments; ``message_group``: the key whose messages
        a broker declaring ``message_groups`` (an SQS FIFO queue) delivers in send order.

        Raises :class:`TaskOptionError` or :class:`SerializationError`; sends nothing.
        """
        now = time.time()
        # Checked here, once per message: a wrong type is a one-line error naming it.
        due = timing.due(countdown, eta, now) if countdown is not None or eta is not None \
            else None
        expires_at = timing.expiry(expires, now) if expires is not None else None
        if (queue is None or priority is None) and self.conf.task_routes is not None:
            from conveyor.routing import route

            found = route(self.routers, name, args, kwargs, options={"queue": queue},
                          task=self.tasks.get(name))
            queue = queue or found.get("queue")
            priority = priority if priority is not None else found.get("priority")
        queue = queue or self.conf.task_default_queue
        if priority is None:
            priority = self.conf.task_default_priority
        if priority:
            from conveyor.routing import check_priority

            extra["priority"] = check_priority(priority)
        if not isinstance(queue, str) or not queue.strip():
            raise TaskOptionError("queue name must be a non-empty string")
        if message_group is not None:
            extra["message_group"] = _check_group(message_group)
        if argsrepr is not None or kwargsrepr is not None:
            for label, shown in (("argsrepr", argsrepr), ("kwargsrepr", kwargsrepr)):
                if shown is not None:
                    if not isinstance(shown, str):
                        raise TaskOptionError(
                            f"{label} must be a string, not {type(shown).__name__}")
                    extra[label] = shown
        content_type, packed_args, packed_kwargs = Message.pack_arguments(
            self.task_codec, list(args or ()), dict(kwargs or {}))
        msg = Message(id=new_id() if task_id is None else check_task_id(task_id), task=name,
                      args=packed_args,
                      kwargs=packed_kwargs, content_type=content_type, eta=due,
                      expires=expires_at, max_retries=max_retries, sent_at=now, **extra)
        return Outgoing(msg, queue, max(0.0, due - now) if due is not None else 0.0)

    def build_many(self, name: str, arguments: Iterable[Iterable[Any] | None],
                   **options: Any) -> list[Outgoing]:
        """One :class:`Outgoing` per positional-argument tuple, each what
        ``build_message(name, args, None, **options)`` gives (a fresh id each), with the
        options checked and resolved once for the batch rather than once per message.

        With ``task_routes`` set, each message is routed on its own (a router may look at
        the arguments). ``task_id`` is refused: each message needs its own.
        """
        if "task_id" in options:
            raise TaskOptionError("build_many() gives every message its own id: send "
                                  "messages with a task_id one by one")
        arguments = list(arguments)
        if not arguments:
            return []
        if self.conf.task_routes is not None:
            return [self.build_message(name, args, None, **options) for args in arguments]
        # The first message carries the batch's checked options (queue, priority, due,
        # expiry...); the others copy them with their own id and arguments.
        first = self.build_message(name, arguments[0], None, **options)
        msg, queue, delay = first.message, first.queue, first.delay
        codec = self.task_codec
        pack = Message.pack_arguments
        batch = [first]
        append = batch.append
        rest = tuple(getattr(msg, f) for f in _SHARED_FIELDS)
        shared = dict(zip(_SHARED_FIELDS, rest, strict=True))
        for args in arguments[1:]:
            content_type, packed_args, packed_kwargs = pack(codec, list(args or ()), {})
            if _POSITIONAL:     # a third cheaper than keywords
                out = Message(new_id(), name, packed_args, packed_kwargs, content_type, *rest)
            else:  # Message's fields reordered
                out = Message(id=new_id(), task=name, args=packed_args, kwargs=packed_kwargs,
                              content_type=content_type, **shared)
            append(Outgoing(out, queue, delay))
        return batch

    def publish(self, batch: list[Outgoing]) -> None:
        """Encode, enqueue, then queue PENDING records to be written behind (see
        :mod:`conveyor.pending`). Messages with the same queue and delay go in one
        ``enqueue_many``. Unencodable arguments raise before anything is sent."""
        bodies = [o.message.encode(self.signer) for o in batch]
        if signals.before_task_publish.receivers or signals.after_task_publish.receivers:
            signals.publish(batch, lambda: self.enqueue(batch, bodies))
        else:
            self.enqueue(batch, bodies)
        if self.conf.task_store_pending:
            self.pending.add(self.pending_records(batch))

    @staticmethod
    def pending_records(batch: list[Outgoing]) -> list[StoredRecord]:
        """The PENDING records of messages being sent: the fields a :class:`TaskRecord`
        reads back, as JSON written from a template: this runs once per message sent, and
        building a dict for ``json`` took a sixth of a bulk send's time. The part after the
        id is written once per run of messages sharing task, queue, send time, parent and
        group (a whole ``map`` batch)."""
        q = quote_json
        records: list[StoredRecord] = []
        append = records.append
        shared: tuple[Any, ...] = ()
        tail = b""
        for o in batch:
            msg = o.message
            key = (msg.task, o.queue, msg.sent_at, msg.parent, msg.group)
            if key != shared:
                shared = key
                extra = ""
                if msg.parent is not None:
                    extra += f',"parent":{q(msg.parent)}'
                if msg.group is not None:
                    extra += f',"group":{q(msg.group)}'
                tail = (f',"state":"PENDING","task":{q(msg.task)},"queue":{q(o.queue)},'
                        f'"updated_at":{msg.sent_at!r}{extra}}}').encode()
            append(StoredRecord(msg.id, "PENDING", b'{"task_id":' + q(msg.id).encode() + tail,
                                msg.task, o.queue))
        return records

    @property
    def pending(self) -> PendingWriter:
        """Writes PENDING records behind the send path."""
        if self._pending is None:
            with self._lock:
                if self._pending is None:
                    self._pending = PendingWriter(
                        lambda: self.backend, ttl=lambda: self.conf.result_expires,
                        exit_timeout=lambda: self.conf.task_pending_exit_timeout)
        return self._pending

    def flush_pending(self) -> None:
        """Make every PENDING record sent from this process visible in the backend."""
        if self._pending is not None:
            self._pending.flush()

    def enqueue(self, batch: list[Outgoing], bodies: list[bytes] | None = None) -> None:
        """Put messages on the broker, cutting delays to the broker's ``max_delay``: the
        worker re-delays a message that arrives before its eta (delays in hops)."""
        broker = self.broker
        capabilities = broker.capabilities
        limit = capabilities.max_delay
        if bodies is None:
            bodies = [o.message.encode(self.signer) for o in batch]
        largest = capabilities.max_message_size
        if largest is not None:
            _check_sizes(batch, bodies, largest, broker.large_message_hint)
        # Only brokers that declare priorities (message groups) are given one: others'
        # enqueue lacks the keyword.
        ranked = capabilities.priorities
        grouped = capabilities.message_groups
        if len(batch) == 1:     # delay(): no buckets
            o = batch[0]
            opts: dict[str, Any] = {"delay": o.delay if limit is None else min(o.delay, limit)}
            if ranked and o.message.priority:
                opts["priority"] = o.message.priority
            if grouped and o.message.message_group is not None:
                opts["message_group"] = o.message.message_group
            self._retrying(broker.enqueue, o.queue, bodies[0], **opts)
            return
        buckets: dict[tuple[str, float, int, str | None], list[bytes]] = defaultdict(list)
        for o, body in zip(batch, bodies, strict=True):
            delay = o.delay if limit is None else min(o.delay, limit)
            buckets[(o.queue, delay, o.message.priority if ranked else 0,
                     o.message.message_group if grouped else None)].append(body)
        for (queue, delay, priority, group), same in buckets.items():
            opts = {"delay": delay}
            if priority:
                opts["priority"] = priority
            if group is not None:
                opts["message_group"] = group
            if len(same) == 1:
                self._retrying(broker.enqueue, queue, same[0], **opts)
            else:
                self._retrying(broker.enqueue_many, queue, same, **opts)

    def _retrying(self, send: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Send, retrying a lost connection with backoff (0.1 s doubling to 1 s) for up to
        ``broker_publish_retry_timeout`` seconds, as Celery's publish retry does (it counts
        tries; a budget in seconds is what rides out a broker restart). May duplicate a
        message whose first send reached the broker, never lose one."""
        pause = 0.1
        deadline = time.monotonic() + self.conf.broker_publish_retry_timeout
        while True:
            try:
                send(*args, **kwargs)
                return
            except ConveyorError as exc:
                left = deadline - time.monotonic()
                if not exc.retryable or left <= 0:
                    raise
                time.sleep(min(pause, left))
                pause = min(pause * 2, 1.0)

    def send_task(self, name: str, args: Iterable[Any] | None = None,
                  kwargs: dict[str, Any] | None = None, **options: Any) -> AsyncResult:
        """Send a task by name (it need not be registered here); returns its AsyncResult.

        Options as :meth:`Task.apply_async`.
        """
        out = self.build_message(name, args, kwargs, **options)
        self.publish([out])
        return self.AsyncResult(out.message.id)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's name
        """A handle on the task ``task_id``'s state and result."""
        from conveyor.result import AsyncResult

        return AsyncResult(task_id, app=self)

    def GroupResult(self, task_ids: Iterable[str]) -> Any:  # noqa: N802 - Celery's name
        """A handle on several tasks' results, in order."""
        from conveyor.result import GroupResult

        return GroupResult([self.AsyncResult(t) for t in task_ids])

    def record(self, task_id: str) -> TaskRecord | None:
        """The decoded backend record of ``task_id``; None when unknown or expired."""
        self.flush_pending()
        stored = self.backend.get(task_id)
        return TaskRecord.from_stored(stored) if stored is not None else None


#: The task base class, for ``class MyTask(app.Task)`` as in Celery. Set after the class body:
#: inside it, the name would shadow the type in annotations.
Conveyor.Task = Task  # type: ignore[attr-defined]
