"""The task message: what a producer puts on the broker and a worker takes off it.

Its wire form is one JSON object (optionally HMAC-signed); drivers never look inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.exceptions import MessageDecodeError
from conveyor.serialization import Codec, Signer, dumps_json, loads_json

WIRE_VERSION = 1


@dataclass
class Message:
    """One task invocation.

    ``eta`` and ``expires`` are absolute epoch seconds. ``history`` carries the attempt
    records of earlier tries (a retry is a new message), so a worker can write the full
    history without reading the backend first. ``callbacks`` are the rest of a chain.
    """

    id: str
    task: str
    args: Any = field(default_factory=list)
    kwargs: Any = field(default_factory=dict)
    content_type: str = "json"
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    max_retries: int | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    chain_ids: list[str] = field(default_factory=list)
    group: str | None = None
    parent: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    sent_at: float = 0.0

    def encode(self, signer: Signer) -> bytes:
        """Wire bytes of this message (signed when ``signer`` has a key).

        Raises :class:`~conveyor.exceptions.SerializationError` for arguments JSON cannot
        encode.
        """
        # Spelled out rather than dataclasses.asdict (which deep-copies every value and was a
        # quarter of the cost of delay()); fields at their defaults are left out.
        data: dict[str, Any] = {"v": WIRE_VERSION, "id": self.id, "task": self.task,
                                "args": self.args, "kwargs": self.kwargs,
                                "sent_at": self.sent_at}
        for name, default in _OPTIONAL.items():
            value = getattr(self, name)
            if value != default:
                data[name] = value
        return signer.sign(dumps_json(data))

    @classmethod
    def decode(cls, data: bytes, signer: Signer) -> Message:
        """Parse wire bytes; raises :class:`MessageDecodeError` saying what is wrong."""
        body = signer.verify(data)
        raw = loads_json(body)
        if not isinstance(raw, dict):
            raise MessageDecodeError("message is not a JSON object")
        version = raw.pop("v", None)
        if version != WIRE_VERSION:
            raise MessageDecodeError(f"unsupported message version {version!r}")
        try:
            msg = cls(**raw)
        except TypeError as exc:
            raise MessageDecodeError(f"message has unexpected fields: {exc}") from exc
        if not isinstance(msg.id, str) or not isinstance(msg.task, str):
            raise MessageDecodeError("message lacks a string 'id' or 'task'")
        return msg

    def arguments(self, codec: Codec) -> tuple[list[Any], dict[str, Any]]:
        """Decoded ``(args, kwargs)``; raises :class:`MessageDecodeError`."""
        if self.content_type == "json":
            args, kwargs = codec.unpack("json", self.args), codec.unpack("json", self.kwargs)
        else:
            args, kwargs = codec.unpack(self.content_type, self.args)
        if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
            raise MessageDecodeError("args must be a list and kwargs an object")
        return list(args), dict(kwargs)

    @staticmethod
    def pack_arguments(codec: Codec, args: Any, kwargs: Any) -> tuple[str, Any, Any]:
        """Encode arguments for a new message: ``(content_type, args, kwargs)``."""
        if codec.serializer == "json":
            # Checked when the message is encoded, before anything is sent.
            return "json", list(args), dict(kwargs)
        content_type, payload = codec.pack((list(args), dict(kwargs)))
        return content_type, payload, None


#: Fields written only when they differ from their default (the others are always written).
_OPTIONAL: dict[str, Any] = {
    "content_type": "json", "retries": 0, "eta": None, "expires": None, "max_retries": None,
    "callbacks": [], "chain_ids": [], "group": None, "parent": None, "history": []}
