"""Shared by the MongoDB broker and result backend: client, collections, clock and errors.

The URL goes to pymongo's own parser (``mongodb://`` and ``mongodb+srv://``), so every option
pymongo documents (``authSource``, ``tls``, ``replicaSet``, ``directConnection``,
``w``/``journal``, ``serverSelectionTimeoutMS``...) works and wins over our defaults; the
database comes from the URL's path (``conveyor`` when it has none). Our own option,
``prefix`` (the start of every collection name, default ``conveyor_``), may be given in the
query too; it is removed before pymongo sees the URL.

Times are float seconds by the **server's clock**: the offset from the local clock is
measured with ``hello`` (whose ``localTime`` the server stamps) and refreshed every minute,
so workers whose clocks drift apart still agree on when a lease runs out.

Every pymongo exception is translated in :class:`MongoErrors`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    DriverError,
    InvalidURLError,
    ValueRefusedError,
)
from conveyor.registry import require
from conveyor.url import URL

if TYPE_CHECKING:
    from pymongo import MongoClient
    from pymongo.collection import Collection
    from pymongo.database import Database

DEFAULT_PREFIX = "conveyor_"
DEFAULT_DATABASE = "conveyor"
#: Fail within seconds when the server is down (pymongo waits 30 s by default); workers
#: retry with backoff anyway. Each can be overridden in the URL.
_DEFAULTS = {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 5000,
             "socketTimeoutMS": 30000, "appname": "conveyor"}
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
#: Server error codes that mean "your credentials or permissions are wrong": Unauthorized,
#: AuthenticationFailed, UserNotFound, and Atlas's "bad auth".
_AUTH_CODES = {13, 18, 11, 8000}
#: Codes that refuse the value itself: BSONObjectTooLarge, a document or key too large,
#: failed schema validation, out of disk space.
_REFUSED_CODES = {10334, 17419, 17420, 17280, 121, 14031}
_CLOCK_REFRESH = 60.0


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start a collection name, else raise ConfigurationError."""
    if not isinstance(prefix, str) or not _PREFIX.match(prefix) or prefix.startswith("system."):
        raise ConfigurationError(
            f"invalid MongoDB collection prefix {prefix!r}: use 1-64 letters, digits, '_', '.' "
            "or '-', starting with a letter or '_' (for example 'conveyor_')")
    return prefix


def split_prefix(url: URL) -> tuple[str, str | None]:
    """``url``'s text without our ``prefix`` query option, and that option (None if absent)."""
    parts = urlsplit(url.raw)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = [v for k, v in pairs if k == "prefix"]
    if not ours:
        return url.raw, None
    rest = urlencode([(k, v) for k, v in pairs if k != "prefix"], safe=",:/")
    return urlunsplit(parts._replace(query=rest)), ours[-1]


def to_date(seconds: float) -> datetime:
    """Epoch seconds as the timezone-aware datetime BSON stores (ms resolution)."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def check_options(raw: str, where: str) -> None:
    """Raise InvalidURLError naming the first query option pymongo would refuse or, worse,
    ignore with only a warning (a misspelt ``journal`` must not silently mean "off")."""
    from pymongo.uri_parser import split_options

    pairs = parse_qsl(urlsplit(raw).query, keep_blank_values=True)
    for name, value in pairs:
        try:
            split_options(urlencode([(name, value)]), validate=True, warn=False)
        except (ValueError, TypeError) as exc:  # pymongo's ConfigurationError is neither
            raise InvalidURLError(f"invalid option {name}={value!r} in {where}: {exc}") from exc
        except Exception as exc:
            raise InvalidURLError(
                f"unknown option {name!r} in {where}: see pymongo's MongoClient options; "
                "conveyor's own is 'prefix'") from exc


class MongoErrors:
    """The one place pymongo exceptions become conveyor's, always ``from`` the original.

    Lost connections, server selection and network timeouts and a primary stepping down
    (``AutoReconnect`` and its family) become :class:`ConnectionLostError` (retryable);
    refused credentials and missing permissions become :class:`AuthenticationError`; a
    value the server or pymongo refuses (a document over 16 MiB, invalid BSON, a failed
    validation) becomes :class:`ValueRefusedError`, not retryable; a malformed URL becomes
    :class:`InvalidURLError`; anything else :class:`DriverError`. Messages name the server
    with its password masked. Stateless, so one instance can guard every call of a driver.
    """

    __slots__ = ("_where",)

    def __init__(self, url: URL) -> None:
        self._where = url.masked

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or exc_type is None:
            return
        from bson.errors import BSONError
        from pymongo import errors as px

        if isinstance(exc, DriverError) or not isinstance(exc, (px.PyMongoError, BSONError)):
            return
        text = f"mongodb at {self._where}: {str(exc).split(', full error:')[0]}"
        if isinstance(exc, (px.InvalidURI, px.ConfigurationError)):
            raise InvalidURLError(text) from exc
        if isinstance(exc, px.ConnectionFailure):  # AutoReconnect, timeouts, not primary
            raise ConnectionLostError(text) from exc
        code = getattr(exc, "code", None)
        if isinstance(exc, px.BulkWriteError):
            # A batch carries each refusal in its own write error; its own code says only
            # "batch op errors occurred".
            errors = exc.details.get("writeErrors") or [{}]
            text = f"mongodb at {self._where}: {errors[0].get('errmsg', exc)}"
            if {e.get("code") for e in errors} & _REFUSED_CODES:
                raise ValueRefusedError(text) from exc
        if isinstance(exc, px.OperationFailure) and code in _AUTH_CODES:
            raise AuthenticationError(text) from exc
        if isinstance(exc, (px.DocumentTooLarge, BSONError)) or code in _REFUSED_CODES:
            raise ValueRefusedError(text) from exc
        if isinstance(exc, px.OperationFailure) and exc.has_error_label("RetryableWriteError"):
            raise ConnectionLostError(text) from exc  # e.g. a primary stepping down mid-write
        raise DriverError(text) from exc


class MongoStore:
    """One client (a thread-safe pool), its database, our collections and the server clock.

    Connects lazily: building it needs no server. Collections are named ``<prefix><name>``;
    their indexes are created on first use (idempotent on the server).
    """

    def __init__(self, url: URL, *, prefix: str | None = None, **options: Any) -> None:
        pymongo = require("pymongo", extra="mongodb")
        raw, from_url = split_prefix(url)
        check_options(raw, url.masked)
        self.prefix = validate_prefix(from_url if from_url is not None else
                                      prefix if prefix is not None else DEFAULT_PREFIX)
        self.errors = MongoErrors(url)
        given = {k.lower() for k, _ in parse_qsl(urlsplit(raw).query)} | {
            k.lower() for k in options}
        for name, value in _DEFAULTS.items():
            if name.lower() not in given:
                options[name] = value
        options["tz_aware"] = True
        with self.errors:
            try:
                self.client: MongoClient[dict[str, Any]] = pymongo.MongoClient(raw, **options)
            except ValueError as exc:  # e.g. a port that is not a number
                raise InvalidURLError(f"malformed MongoDB URL {url.masked}: {exc}") from exc
            self.db: Database[dict[str, Any]] = self.client.get_default_database(
                DEFAULT_DATABASE)
        self._ready: set[str] = set()
        self._lock = threading.Lock()
        self._offset = 0.0
        self._measured = float("-inf")
        self._measured_once = False

    def collection(self, name: str, indexes: Sequence[tuple[Sequence[tuple[str, int]],
                                                               dict[str, Any]]] = ()
                   ) -> Collection[dict[str, Any]]:
        """The collection ``<prefix><name>``, its ``indexes`` ((keys, options) pairs) created
        once per store (creating an existing index is a no-op on the server)."""
        coll = self.db[self.prefix + name]
        if name not in self._ready:
            with self._lock, self.errors:
                if name not in self._ready:
                    for keys, opts in indexes:
                        coll.create_index(list(keys), **opts)
                    self._ready.add(name)
        return coll

    def now(self) -> float:
        """Epoch seconds by the server's clock (the offset is re-measured every minute)."""
        local = time.time()
        if local - self._measured > _CLOCK_REFRESH:
            self._measure()
            local = time.time()
        return local + self._offset

    def _measure(self) -> None:
        sent = time.time()
        with self.errors:
            reply = self.client.admin.command("hello")
        received = time.time()
        stamp = reply.get("localTime")
        self._measured = received
        if not isinstance(stamp, datetime) or (received - sent > 0.1 and self._measured_once):
            return  # a slow reply says little about the clock: keep the earlier estimate
        self._measured_once = True
        # localTime is truncated to the millisecond: +0.5 ms centres it. An offset within
        # the estimate's own error (that millisecond plus half the round trip, and NTP's
        # usual few ms) is noise: the local clock is kept then.
        offset = stamp.timestamp() + 0.0005 - (sent + received) / 2
        noise = 0.005 + (received - sent) / 2
        self._offset = offset if abs(offset) > noise else 0.0

    def server_info(self) -> dict[str, str]:
        """``{"server": "mongodb 7.0.2", "database": ..., "prefix": ...}`` for ``conveyor check``;
        a wire-compatible server that names itself (SecantusDB) is named."""
        with self.errors:
            build = self.client.admin.command("buildInfo")
        name = "mongodb"
        version = str(build.get("version", "?"))
        if "secantusVersion" in build:
            name, version = "secantusdb", f"{build['secantusVersion']} (as mongodb {version})"
        return {"server": f"{name} {version}", "database": self.db.name, "prefix": self.prefix}

    def ping(self) -> None:
        """One round trip that needs the database's read permission (``ping`` alone needs
        none); raises ConnectionLostError/AuthenticationError."""
        with self.errors:
            self.db.list_collection_names(filter={"name": self.prefix + "ping"})

    def close(self) -> None:
        """Close the pool. Idempotent; the store cannot be used afterwards (pymongo 4)."""
        with self.errors:
            self.client.close()
