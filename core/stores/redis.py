"""Shared by the Redis broker and result backend: client creation and error translation.

The URL goes to redis-py's own parser (``redis://``, ``rediss://`` for TLS, ``unix://``), so
every query option redis-py documents (``ssl_cert_reqs``, ``socket_timeout``, ...) works and
wins over our defaults. Every redis-py exception is translated in :class:`RedisErrors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    DriverError,
    ValueRefusedError,
)
from conveyor.registry import require
from conveyor.url import URL

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script
    from redis.typing import KeyT

#: Fail fast when the server is down (redis-py's default retries ten times, up to 1 s apart),
#: but retry once so a pooled connection broken by a server restart is replaced transparently.
DEFAULT_RETRIES = 1
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Redis reads a blocking timeout that rounds below 1 ms as 0, which means "block forever".
MIN_BLOCK = 0.002
#: Replies that refuse the value, not the connection: out of memory under ``maxmemory``,
#: a bulk string over ``proto-max-bulk-len``, a value of the wrong type for the command.
_REFUSALS = ("OOM command not allowed", "Protocol error: invalid bulk length",
             "string exceeds maximum", "WRONGTYPE")


def make_client(url: URL, *, retries: int = DEFAULT_RETRIES, **options: Any) -> redis.Redis:
    """A thread-safe, pooled client for ``url`` that returns bytes. Connects lazily.

    ``options`` go to ``redis.Redis.from_url`` (query parameters in the URL override them).
    Raises :class:`~conveyor.exceptions.MissingDependencyError` without redis-py.
    """
    if "sentinel" in url.scheme:
        raise ConfigurationError(
            f"{url.scheme}:// is not supported yet: give the current primary's address as "
            "redis://host:port/db (or rediss:// for TLS)")
    redis_mod = require("redis", extra="redis")
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    options.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    options.setdefault("retry", Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries))
    options["decode_responses"] = False  # message bodies and results are bytes
    with RedisErrors(url):
        client: redis.Redis = redis_mod.Redis.from_url(url.raw, **options)
    return client


def block_timeout(client: redis.Redis, seconds: float) -> float:
    """The timeout to give a blocking command (BLPOP, BLMOVE) that should wait ``seconds``.

    At least :data:`MIN_BLOCK`, and short enough to return before the client's own
    ``socket_timeout`` (redis-py's default is 5 s) would abort the read; callers loop.
    """
    kwargs = client.connection_pool.connection_kwargs
    # Unset means redis-py's own default (5 s since redis-py 6), not "no timeout".
    limit = kwargs["socket_timeout"] if "socket_timeout" in kwargs else _default_socket_timeout()
    if limit is not None:
        seconds = min(seconds, max(limit - 0.5, limit / 2))
    return max(round(seconds, 3), MIN_BLOCK)


def _default_socket_timeout() -> float | None:
    from redis import connection

    value = getattr(connection, "DEFAULT_SOCKET_TIMEOUT", None)
    if value is None:
        # Older redis-py: read the default off the Connection signature.
        import inspect

        param = inspect.signature(connection.AbstractConnection.__init__).parameters.get(
            "socket_timeout")
        value = None if param is None else param.default
    return float(value) if isinstance(value, int | float) else None


def run_script(client: redis.Redis, script: Script, keys: Sequence[KeyT],
               args: Sequence[Any]) -> Any:
    """EVALSHA ``script`` in one round trip, loading it again if the server lost it (restart,
    SCRIPT FLUSH). Cheaper than calling the ``Script``; redis-py errors pass through."""
    from redis.exceptions import NoScriptError

    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        script.sha = client.script_load(script.script)
        return client.evalsha(script.sha, len(keys), *keys, *args)


def server_info(client: redis.Redis, errors: RedisErrors) -> dict[str, str]:
    """``{"server": "redis 7.2.4"}`` (or ``valkey ...``) from INFO, for ``conveyor check``."""
    with errors:
        facts = client.info("server")
    name = str(facts.get("server_name", "redis"))
    version = facts.get(f"{name}_version") or facts.get("redis_version", "?")
    return {"server": f"{name} {version}"}


class RedisErrors:
    """The one place redis-py exceptions become conveyor's, always ``from`` the original.

    Connection and timeout errors (and a replica turned read-only by a failover) become
    :class:`ConnectionLostError`; an out-of-memory or too-large refusal becomes
    :class:`ValueRefusedError`; refused credentials, missing ACL permissions and a database
    index the server does not have become :class:`AuthenticationError`; anything else from
    redis-py becomes :class:`DriverError`. Messages name the server with its password masked.
    Stateless, so one instance can guard every call of a driver.
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
        from redis import exceptions as rx

        if isinstance(exc, DriverError) or not isinstance(exc, (rx.RedisError, OSError)):
            return
        text = f"redis at {self._where}: {exc}"
        if isinstance(exc, (rx.AuthenticationError, rx.AuthorizationError,
                            rx.NoPermissionError)) or (
                isinstance(exc, rx.ResponseError) and "DB index is out of range" in str(exc)):
            raise AuthenticationError(text) from exc
        if isinstance(exc, (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, OSError)):
            raise ConnectionLostError(text) from exc
        refused = str(exc).startswith(_REFUSALS) or "-OOM command not allowed" in str(exc)
        if isinstance(exc, rx.DataError) or (isinstance(exc, rx.ResponseError) and refused):
            raise ValueRefusedError(text) from exc
        raise DriverError(text) from exc
