"""Throwaway real servers for the driver tests, started from pip packages.

Each server module exposes a session fixture yielding a URL. A server given by an environment
variable (``CONVEYOR_TEST_<NAME>_URL``) is used as is. When a server cannot be had, the test is
skipped on a laptop but **fails under CI** (``CI=true``): CI must never skip a driver.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when running under CI (``CI`` set to a true value)."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip (laptop) or fail (CI) a test whose server cannot be had."""
    if in_ci():
        pytest.fail(f"driver server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 20.0) -> bool:
    """Wait until something accepts connections on 127.0.0.1:port."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def terminate(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
    """SIGTERM ``proc``; SIGKILL it if it is still running after ``grace`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
