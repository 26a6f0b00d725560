"""An immutable broker/backend URL that never shows its password.

We only split off the scheme and mask credentials here (by splitting the URL into its parts,
not by a pattern over the whole string); each driver hands ``url.raw`` to its client library's
own parser (``redis.from_url``, ``sqlalchemy.make_url``, ...), so the grammar
of each URL is the one its client documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from conveyor.exceptions import InvalidURLError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: Query options whose value is a secret: any key ending in one of these words (so
#: ``aws_secret_access_key`` and ``aws_session_token`` too), compared case-insensitively.
#: The one list every driver's secret options belong in.
SECRET_QUERY_KEYS: tuple[str, ...] = (
    "password", "passwd", "pwd", "secret", "secret_key", "secret_access_key",
    "session_token", "token", "sas_token", "access_token", "api_key", "apikey",
    # MongoDB's, which may carry AWS_SESSION_TOKEN:<token>.
    "authmechanismproperties")


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
        userinfo = _split(self.raw)[1]
        password = userinfo.partition(":")[2] if userinfo is not None else ""
        if ("?" in password or "#" in password) and _only_reading(self.raw) and not \
                re.split(r"[?#]", password, maxsplit=1)[0].isdigit():  # host:6379?x=a@b/c
            raise InvalidURLError(
                f"malformed URL {mask_password(self.raw)!r}: the password holds an unencoded "
                "'?' or '#', which ends the host part; encode '?' in the password as %3F and "
                "'#' as %23 (and '@' as %40, '/' as %2F)")
        if userinfo is not None and "/" in userinfo:
            raise InvalidURLError(
                f"malformed URL {mask_password(self.raw)!r}: the user name or password holds "
                "an unencoded '/', which ends the host part; encode '/' in the password as "
                "%2F (and '@' as %40, ':' as %3A)")
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


def _split(raw: str) -> tuple[str, str | None, str, str]:
    """``(scheme://, userinfo or None, rest up to the query, ?query#fragment)``.

    The user info runs to the *last* ``@`` before the query, so an unencoded ``@`` or ``/``
    in a password stays inside it (and is masked whole). A URL whose authority is empty
    (``sqlite:///file``) has no user info, whatever its path holds.
    """
    match = _SCHEME.match(raw)
    if match is None:
        return "", None, raw, ""
    scheme, rest = raw[:match.end()], raw[match.end():]
    # A '?' or '#' in a password would end the authority early: when an '@' follows them
    # before the first '/', and they stand after the user name's ':', it is the password's.
    authority = rest.split("/", 1)[0]
    at = authority.rfind("@")
    if at > 0:
        user, colon, password = authority[:at].partition(":")
        if colon and ("?" in password or "#" in password) and not (
                "?" in user or "#" in user):
            after = rest[at + 1:]
            cut = min((i for i in (after.find("?"), after.find("#")) if i >= 0),
                      default=len(after))
            return scheme, authority[:at], after[:cut], after[cut:]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    if head.startswith("/") or "@" not in head:
        return scheme, None, head, tail
    userinfo, _, hostpart = head.rpartition("@")
    if "/" in userinfo and ":" not in userinfo:
        return scheme, None, head, tail  # an '@' in the path (s3://bucket/a@b), no user info
    return scheme, userinfo, hostpart, tail


def _only_reading(raw: str) -> bool:
    """True when a '?' or '#' in the password is the only way to read ``raw``: nothing
    before the first '?' or '#' holds an '@' (else the URL may be a plain one whose query
    or fragment holds an '@', and is left to its driver; it is masked either way)."""
    rest = raw[_SCHEME.match(raw).end():]  # type: ignore[union-attr]  # checked by the caller
    return "@" not in re.split(r"[?#]", rest, maxsplit=1)[0]


def _secret_key(key: str) -> bool:
    key = key.lower()
    return any(key.endswith(word) for word in SECRET_QUERY_KEYS)


def mask_password(raw: str) -> str:
    """Return ``raw`` with every credential replaced by ``***``: the password of its user
    info (found by parsing, so an unencoded ``@``, ``/``, ``?`` or ``#`` in it leaks
    nothing) and the
    value of each secret query option (``password=``, ``token=``, ``aws_secret_access_key=``,
    ... see :data:`SECRET_QUERY_KEYS`)."""
    scheme, userinfo, hostpart, tail = _split(raw)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        hostpart = f"{user}{':***' if colon else ''}@{hostpart}"
    if tail.startswith("?"):
        query, hash_, fragment = tail[1:].partition("#")
        parts = re.split(r"([&;])", query)
        for n in range(0, len(parts), 2):
            key, eq, _ = parts[n].partition("=")
            if eq and _secret_key(key):
                parts[n] = f"{key}=***"
        tail = "?" + "".join(parts) + hash_ + fragment
    return scheme + hostpart + tail
