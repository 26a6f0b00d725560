"""Find drivers by URL scheme through the ``conveyor.brokers`` / ``conveyor.backends`` entry points.

The built-in drivers are registered exactly like third-party ones. A scheme is looked up in
full first (``postgresql+psycopg``), then by the part before ``+``. Only the driver asked for is
imported.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import MissingDependencyError, UnknownSchemeError
from conveyor.url import URL

if TYPE_CHECKING:
    from conveyor.backend import ResultBackend
    from conveyor.broker import Broker

BROKER_GROUP = "conveyor.brokers"
BACKEND_GROUP = "conveyor.backends"

#: The extra that installs each built-in scheme's client library.
EXTRA_FOR_SCHEME = {
    "redis": "redis", "rediss": "redis",
    "postgresql": "postgres", "postgres": "postgres",
    "mysql": "mysql", "mariadb": "mysql",
    "sqs": "aws", "s3": "aws",
    "mongodb": "mongodb", "mongodb+srv": "mongodb",
}


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name.lower(): ep for ep in entry_points(group=group)}


def known_schemes(group: str) -> list[str]:
    """All schemes registered in ``group``, sorted."""
    return sorted(_entry_points(group))


def find_driver(group: str, url: URL) -> type[Any]:
    """Import and return the driver class registered for ``url``'s scheme.

    Raises :class:`UnknownSchemeError` (with the known schemes and a suggestion) or
    :class:`MissingDependencyError` (naming the extra to install).
    """
    eps = _entry_points(group)
    ep = eps.get(url.scheme) or eps.get(url.base_scheme)
    kind = "broker" if group == BROKER_GROUP else "result backend"
    if ep is None:
        close = difflib.get_close_matches(url.base_scheme, list(eps), n=1)
        hint = f" Did you mean '{close[0]}://'?" if close else ""
        raise UnknownSchemeError(
            f"no {kind} driver for scheme '{url.scheme}://' in {url.masked!r}.{hint} "
            f"Known schemes: {', '.join(sorted(eps)) or '(none)'}.")
    try:
        return ep.load()  # type: ignore[no-any-return]
    except ImportError as exc:
        if isinstance(exc, MissingDependencyError):
            raise
        extra = EXTRA_FOR_SCHEME.get(url.scheme) or EXTRA_FOR_SCHEME.get(url.base_scheme)
        fix = (f"pip install 'conveyor[{extra}]'" if extra
               else f"install the package that provides {ep.value}")
        raise MissingDependencyError(
            f"the {kind} driver for '{url.scheme}://' needs a library that is not installed "
            f"({exc.name or exc}): {fix}") from exc


def broker_from_url(url: str | URL, **options: Any) -> Broker:
    """Build the broker driver for ``url``."""
    parsed = URL.of(url)
    return find_driver(BROKER_GROUP, parsed)(parsed, **options)  # type: ignore[no-any-return]


def backend_from_url(url: str | URL, **options: Any) -> ResultBackend:
    """Build the result backend driver for ``url``."""
    parsed = URL.of(url)
    return find_driver(BACKEND_GROUP, parsed)(parsed, **options)  # type: ignore[no-any-return]


def require(module: str, *, extra: str) -> Any:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``conveyor[extra]``.

    Drivers call this at construction, so a missing client fails with the fix, not later.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed: pip install 'conveyor[{extra}]'") from exc
