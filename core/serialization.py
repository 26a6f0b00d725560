"""Encoding of task arguments and results, and optional HMAC signing of messages.

JSON is the default and the only format accepted unless pickle is enabled explicitly
(``accept_content=["json", "pickle"]``), because unpickling a message runs arbitrary code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
import time
import warnings
from collections.abc import Callable
from typing import Any

from conveyor.exceptions import ConfigurationError, MessageDecodeError, SerializationError

#: How a signed message body starts.
SIGNED_PREFIX = b"conveyor-hmac1:"


#: One encoder for every message and record: json.dumps() with options builds a new one per
#: call, a measurable cost at tens of thousands of messages a second.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _one_shot(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode``, without building a C encoder per call as ``JSONEncoder.encode``
    does (1.7 us of a 2 us ``[1, 2]``): the C encoder is built once, with the same options.
    It keeps no circular-reference markers (a shared markers dict is left holding ids when an
    encode fails half-way, which would refuse later values); a cycle ends in RecursionError.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    quote = getattr(json.encoder, "c_encode_basestring_ascii", None)
    if make is None or quote is None or not encoder.ensure_ascii:
        return encoder.encode
    c_encode = make(None, encoder.default, quote, None, encoder.key_separator,
                    encoder.item_separator, encoder.sort_keys, encoder.skipkeys,
                    encoder.allow_nan)
    join = "".join

    def encode(value: Any) -> str:
        return join(c_encode(value, 0))

    return encode


#: JSON text of a value (``_ENCODER.encode``'s output, faster).
encode_json: Callable[[Any], str] = _one_shot(_ENCODER)


def dumps_json(value: Any) -> bytes:
    """Compact JSON bytes; raises :class:`SerializationError` naming what could not be encoded."""
    try:
        return encode_json(value).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise serialization_error(exc) from exc


def serialization_error(exc: BaseException) -> SerializationError:
    """The :class:`SerializationError` for a failed JSON encode (``exc`` its cause)."""
    if isinstance(exc, RecursionError):
        detail = "a value contains itself, or is nested too deeply"
    else:
        detail = str(exc)
    return SerializationError(
        f"cannot encode as JSON: {detail}. Pass JSON types (str, int, float, bool, None, "
        "list, dict) or enable pickle with task_serializer='pickle' and "
        "accept_content=['json', 'pickle']")


def quote_json(text: str) -> str:
    """``text`` as a JSON string literal, quotes included (C-accelerated)."""
    return _quote(text)


_quote: Callable[[str], str] = getattr(json.encoder, "c_encode_basestring_ascii", None) or (
    json.encoder.encode_basestring_ascii)


def loads_json(data: bytes) -> Any:
    """Decode JSON bytes; raises :class:`MessageDecodeError`."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageDecodeError(f"not valid JSON: {exc}") from exc


class Codec:
    """Turns values into a JSON-embeddable form and back, by serializer name.

    ``pack`` returns a pair ``(content_type, payload)`` where the payload is plain JSON for
    ``json`` and a base64 string for ``pickle``.
    """

    def __init__(self, *, serializer: str, accept: list[str]) -> None:
        for name in [serializer, *accept]:
            if name not in {"json", "pickle"}:
                raise ConfigurationError(
                    f"unknown serializer {name!r}: use 'json' (default) or 'pickle'")
        if serializer not in accept:
            raise ConfigurationError(
                f"task_serializer={serializer!r} is not in accept_content={accept!r}: "
                "workers would refuse every message; add it to accept_content")
        if "pickle" in accept:
            warnings.warn("pickle is enabled: a message from anyone who can write to the broker "
                          "can run arbitrary code in the worker", stacklevel=3)
        self.serializer = serializer
        self.accept = frozenset(accept)

    def pack(self, value: Any) -> tuple[str, Any]:
        """Encode ``value``; raises :class:`SerializationError` at once."""
        if self.serializer == "json":
            # Round-trip so that what is stored is exactly what a reader will get back.
            return "json", json.loads(dumps_json(value))
        try:
            return "pickle", base64.b64encode(pickle.dumps(value)).decode()
        except Exception as exc:
            raise SerializationError(f"cannot pickle: {exc}") from exc

    def unpack(self, content_type: str, payload: Any) -> Any:
        """Decode a payload; refuses content types not in ``accept_content``."""
        if content_type not in self.accept:
            raise MessageDecodeError(
                f"content type {content_type!r} is not accepted (accept_content="
                f"{sorted(self.accept)})")
        if content_type == "json":
            return payload
        try:
            return pickle.loads(base64.b64decode(payload))
        except Exception as exc:
            raise MessageDecodeError(f"cannot unpickle payload: {exc}") from exc


class Signer:
    """HMAC-SHA256 signing of message bytes. With no key, messages pass through unchanged.

    A signed message reads ``conveyor-hmac1:<hex digest>.<signing time>:<body>``; the digest
    covers the signing time and the body, so neither can be changed without the key. With
    ``max_age``, :meth:`check_age` refuses a message signed (or due, by its eta) longer ago.
    """

    def __init__(self, key: str | bytes | None, *, max_age: float | None = None) -> None:
        self._key = key.encode() if isinstance(key, str) else key
        if max_age is not None and max_age <= 0:
            raise ConfigurationError(f"task_signing_max_age must be positive seconds (or "
                                     f"None), not {max_age!r}")
        self.max_age = max_age

    @property
    def enabled(self) -> bool:
        """True when a signing key is configured."""
        return bool(self._key)

    def _digest(self, signed: bytes) -> bytes:
        assert self._key
        return hmac.new(self._key, signed, hashlib.sha256).hexdigest().encode()

    def sign(self, body: bytes) -> bytes:
        """Prefix ``body`` with its signature and signing time (unchanged when signing is
        off)."""
        if not self._key:
            return body
        stamp = repr(time.time()).encode()
        return SIGNED_PREFIX + self._digest(stamp + b"." + body) + b"." + stamp + b":" + body

    def verify(self, data: bytes) -> bytes:
        """Return the signed body; raise :class:`MessageDecodeError` if unsigned or forged."""
        return self.open(data)[0]

    def open(self, data: bytes) -> tuple[bytes, float | None]:
        """``(body, signing time)`` of a signed message, verified as :meth:`verify` does
        (the time is None when signing is off)."""
        if not self._key:
            if data.startswith(SIGNED_PREFIX):
                data = data.split(b":", 2)[2]
            return data, None
        if not data.startswith(SIGNED_PREFIX):
            raise MessageDecodeError("message is not signed but task_signing_key is set")
        try:
            _, seal, body = data.split(b":", 2)
            digest, stamp = seal.split(b".", 1)
            signed_at = float(stamp)
        except ValueError as exc:
            raise MessageDecodeError("malformed signed message") from exc
        if not hmac.compare_digest(digest, self._digest(stamp + b"." + body)):
            raise MessageDecodeError("message signature does not verify (forged or wrong key)")
        return body, signed_at

    def check_age(self, signed_at: float | None, eta: float | None = None) -> None:
        """Raise :class:`MessageDecodeError` when a signed message is older than ``max_age``
        counted from its signing time, or from its eta when that is later."""
        if self.max_age is None or not self._key or signed_at is None:
            return
        age = time.time() - max(signed_at, eta or 0.0)
        if age > self.max_age:
            raise MessageDecodeError(
                f"signed message is {age:.0f}s old, over task_signing_max_age="
                f"{self.max_age:g}s (a replayed capture, or a message that waited too long)")
