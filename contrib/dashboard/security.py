"""Who may use the dashboard: credentials for non-local binds, CSRF tokens for actions.

Rules: a bind to a loopback address needs no credentials; any other bind refuses to start
without a token or basic-auth credentials (:func:`check_bind`). With credentials, every
request must carry them: ``Authorization: Bearer <token>``, basic auth, or the session
cookie set by ``/login``. Every action is a POST carrying the CSRF token of the page it came
from (an HMAC of the server's per-process secret), and is refused from another origin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field

from conveyor.exceptions import ConfigurationError

COOKIE = "conveyor_dashboard"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    """Credentials (optional) and the per-process secret behind session cookies and CSRF."""

    token: str | None = None
    basic: tuple[str, str] | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def from_options(cls, *, token: str | None, basic_auth: str | None) -> Guard:
        """From ``--token`` and ``--basic-auth user:password`` (or their environment)."""
        basic = None
        if basic_auth:
            user, sep, password = basic_auth.partition(":")
            if not sep or not user or not password:
                raise ConfigurationError("basic auth must be given as USER:PASSWORD")
            basic = (user, password)
        if token is not None and len(token) < 16:
            raise ConfigurationError("the dashboard token must be at least 16 characters")
        return cls(token=token or None, basic=basic)

    @property
    def enabled(self) -> bool:
        """Whether requests need credentials."""
        return self.token is not None or self.basic is not None

    def session(self) -> str:
        """The value of the session cookie ``/login`` sets."""
        return hmac.new(self.secret, b"session", hashlib.sha256).hexdigest()

    def csrf(self) -> str:
        """The CSRF token forms carry."""
        return hmac.new(self.secret, b"csrf", hashlib.sha256).hexdigest()

    def check_csrf(self, value: str | None) -> bool:
        """Whether a submitted CSRF token is this server's."""
        return value is not None and hmac.compare_digest(value, self.csrf())

    def token_ok(self, value: str | None) -> bool:
        """Whether ``value`` is the configured token."""
        return (self.token is not None and value is not None
                and hmac.compare_digest(value.encode(), self.token.encode()))

    def allows(self, authorization: str | None, cookie: str | None) -> bool:
        """Whether a request with these headers may proceed."""
        if not self.enabled:
            return True
        if cookie is not None and hmac.compare_digest(cookie, self.session()):
            return True
        if not authorization:
            return False
        kind, _, value = authorization.partition(" ")
        if kind.lower() == "bearer":
            return self.token_ok(value.strip())
        if kind.lower() == "basic" and self.basic is not None:
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return (hmac.compare_digest(user.encode(), self.basic[0].encode())
                    and hmac.compare_digest(password.encode(), self.basic[1].encode()))
        return False


def check_bind(host: str, guard: Guard) -> None:
    """Refuse a non-loopback bind without credentials."""
    if not is_loopback(host) and not guard.enabled:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without authentication: pass "
            "--token (or CONVEYOR_DASHBOARD_TOKEN) or --basic-auth USER:PASSWORD (or "
            "CONVEYOR_DASHBOARD_BASIC_AUTH), or bind to 127.0.0.1")
