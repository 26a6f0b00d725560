"""An immutable broker/backend URL that never shows its password.

We only split off the scheme and mask the password here; each driver hands ``url.raw`` to its
client library's own parser (``redis.from_url``, ``sqlalchemy.make_url``, ...), so the grammar
of each URL is the one its client documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from conveyor.exceptions import InvalidURLError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_USERINFO = re.compile(r"^(?P<scheme>[^:/]+://)(?P<user>[^:@/]*)(?::(?P<pw>[^@/]*))?@")


@dataclass(frozen=True)
class URL:
    """A parsed driver URL. ``str(url)`` and ``repr(url)`` mask the password as ``***``."""

    raw: str = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, str) or not self.raw.strip():
            raise InvalidURLError("empty URL: give a URL such as 'redis://localhost:6379/0' "
                                  "or 'sqlite:///conveyor.db'")
        if not _SCHEME.match(self.raw):
            raise InvalidURLError(
                f"malformed URL {mask_password(self.raw)!r}: it must start with 'scheme://', "
                "for example 'redis://localhost:6379/0' or 'sqlite:///conveyor.db'")
        try:
            urlsplit(self.raw)
        except ValueError as exc:
            raise InvalidURLError(f"malformed URL {mask_password(self.raw)!r}: {exc}") from exc

    @classmethod
    def of(cls, value: str | URL) -> URL:
        """Return ``value`` as a URL (unchanged when it already is one)."""
        return value if isinstance(value, URL) else cls(value)

    @property
    def scheme(self) -> str:
        """The full scheme, lower-cased, e.g. ``postgresql+psycopg``."""
        match = _SCHEME.match(self.raw)
        assert match is not None  # checked in __post_init__
        return match.group(1).lower()

    @property
    def base_scheme(self) -> str:
        """The scheme before any ``+driver`` part, e.g. ``postgresql``."""
        return self.scheme.split("+", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (last value wins)."""
        return dict(parse_qsl(urlsplit(self.raw).query, keep_blank_values=True))

    @property
    def masked(self) -> str:
        """The URL with its password replaced by ``***``: safe for logs and tables."""
        return mask_password(self.raw)

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"URL({self.masked!r})"


def mask_password(raw: str) -> str:
    """Return ``raw`` with the password part of its user info replaced by ``***``."""
    match = _USERINFO.match(raw)
    if not match or match.group("pw") is None:
        return raw
    return f"{match.group('scheme')}{match.group('user')}:***@{raw[match.end():]}"
