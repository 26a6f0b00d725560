"""The task message: what a producer puts on the broker and a worker takes off it.

Its wire form is one JSON object (optionally HMAC-signed); drivers never look inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.exceptions import MessageDecodeError
from conveyor.serialization import (
    Codec,
    Signer,
    encode_json,
    loads_json,
    quote_json,
    serialization_error,
)

WIRE_VERSION = 1


def _string(value: Any) -> str:
    """A JSON string literal for a str, else the value's JSON."""
    return quote_json(value) if type(value) is str else encode_json(value)


@dataclass(slots=True)
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
    # Empty tuples, not lists, by default: no three fresh lists per message sent.
    callbacks: Sequence[dict[str, Any]] = ()
    chain_ids: Sequence[str] = ()
    group: str | None = None
    parent: str | None = None
    history: Sequence[dict[str, Any]] = ()
    sent_at: float = 0.0
    #: 0 (lowest, the default) to 9; brokers with ``capabilities.priorities`` honour it.
    priority: int = 0
    #: Where the task sits in a workflow (root id, chord it joins, link/link_error
    #: callbacks); read only by :mod:`conveyor.canvas.followups`.
    canvas: dict[str, Any] | None = None
    #: What to show instead of the arguments (Celery's ``argsrepr``/``kwargsrepr``): logs
    #: and the dashboard print these; the worker runs the real ones.
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    #: The key whose messages a broker with ``capabilities.message_groups`` (an SQS FIFO
    #: queue) delivers in send order; it travels with the message through retries.
    message_group: str | None = None

    def encode(self, signer: Signer) -> bytes:
        """Wire bytes of this message (signed when ``signer`` has a key).

        Raises :class:`~conveyor.exceptions.SerializationError` for arguments JSON cannot
        encode.
        """
        # Spelled out rather than dataclasses.asdict (which deep-copies every value and was a
        # quarter of the cost of delay()); fields at their defaults are left out. The fields
        # every message has are written into the text directly (one JSON encode of the
        # arguments, not of a dict built per message); the output is the same JSON object.
        rest: dict[str, Any] = {}
        if self.content_type != "json":
            rest["content_type"] = self.content_type
        if self.retries:
            rest["retries"] = self.retries
        if self.eta is not None:
            rest["eta"] = self.eta
        if self.expires is not None:
            rest["expires"] = self.expires
        if self.max_retries is not None:
            rest["max_retries"] = self.max_retries
        if self.callbacks:
            rest["callbacks"] = self.callbacks
        if self.chain_ids:
            rest["chain_ids"] = self.chain_ids
        if self.group is not None:
            rest["group"] = self.group
        if self.parent is not None:
            rest["parent"] = self.parent
        if self.history:
            rest["history"] = self.history
        if self.priority:
            rest["priority"] = self.priority
        if self.canvas:
            rest["canvas"] = self.canvas
        if self.argsrepr is not None:
            rest["argsrepr"] = self.argsrepr
        if self.kwargsrepr is not None:
            rest["kwargsrepr"] = self.kwargsrepr
        if self.message_group is not None:
            rest["message_group"] = self.message_group
        try:
            text = (f'{{"v":{WIRE_VERSION},"id":{_string(self.id)},"task":{_string(self.task)},'
                    f'"args":{encode_json(self.args)},"kwargs":{encode_json(self.kwargs)},'
                    f'"sent_at":{encode_json(self.sent_at)}'
                    f'{"," + encode_json(rest)[1:] if rest else "}"}')
        except (TypeError, ValueError, RecursionError) as exc:
            raise serialization_error(exc) from exc
        return signer.sign(text.encode())

    @classmethod
    def decode(cls, data: bytes, signer: Signer, *, check_age: bool = True) -> Message:
        """Parse wire bytes; raises :class:`MessageDecodeError` saying what is wrong (also
        for a signed message older than the signer's ``max_age``, unless ``check_age`` is
        False)."""
        body, signed_at = signer.open(data)
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
        if check_age:
            signer.check_age(signed_at, msg.eta if isinstance(msg.eta, int | float) else None)
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
