"""The control channel: commands to workers as messages on a per-worker broker queue.

Every broker carries it with no extra capability: a worker's control queue is an ordinary
queue (``conveyor.control.<digest of the worker's name>``) that the worker's agent thread
reserves from about once a second. A command is a small JSON object
``{"id", "command", "arguments", "expires"}``; a worker acks it once handled and ignores it
after ``expires`` (a command to a worker that is gone dies with it). Replies go to the
backend's entry area as ``control-reply:<command id>:<worker>``, for the sender to collect.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

#: Commands a worker understands.
COMMANDS = ("shutdown", "rate_limit", "pool_grow", "pool_shrink", "ping")
REPLY_PREFIX = "control-reply:"


def control_queue(hostname: str) -> str:
    """The control queue of the worker named ``hostname`` (a safe queue name on every broker,
    whatever the name contains)."""
    return "conveyor-control-" + hashlib.sha256(hostname.encode()).hexdigest()[:20]


def encode_command(command_id: str, command: str, arguments: dict[str, Any], *,
                   ttl: float) -> bytes:
    """The wire form of one command."""
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r}; known: {', '.join(COMMANDS)}")
    return json.dumps({"id": command_id, "command": command, "arguments": arguments,
                       "expires": time.time() + ttl}).encode()


def decode_command(body: bytes) -> dict[str, Any] | None:
    """A command, or None when the body is not one (or has expired)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if (not isinstance(data, dict) or data.get("command") not in COMMANDS
            or not isinstance(data.get("arguments"), dict)
            or not isinstance(data.get("expires"), int | float)
            or data["expires"] < time.time()):
        return None
    return data
