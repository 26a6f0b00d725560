"""The conveyor web dashboard (``pip install 'conveyor[dashboard]'``, ``conveyor dashboard``).

An ASGI app reading the app's broker and result backend directly, so what it shows is the
durable history: it survives restarts and needs no worker events. Build it with
:func:`create_app` to mount it in your own server, or run ``conveyor dashboard -A app``.

Redaction: pass ``redact``, a function that receives each task or dead-letter view (a dict
with ``args``, ``kwargs``, ``result``, ``error_message``, ``traceback``, ...) and returns
what may be shown; e.g. ``lambda v: {**v, "args": "<hidden>", "kwargs": "<hidden>"}``.
From the command line: ``--redact package.module:function``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.exceptions import MissingDependencyError

try:
    import jinja2  # noqa: F401
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise MissingDependencyError(
        f"the dashboard needs {exc.name}: pip install 'conveyor[dashboard]'") from exc

from conveyor.contrib.dashboard.data import Reader, Redactor
from conveyor.contrib.dashboard.security import Guard, check_bind
from conveyor.contrib.dashboard.web import Dashboard

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["Dashboard", "Guard", "Reader", "check_bind", "create_app"]


def create_app(app: Conveyor, *, read_only: bool = False, token: str | None = None,
               basic_auth: str | None = None, redact: Redactor | None = None,
               sample: bool = True) -> Any:
    """The dashboard of ``app`` as a Starlette (ASGI) app.

    ``token`` / ``basic_auth`` (``"user:password"``): credentials every request must carry;
    ``read_only``: no actions; ``redact``: see the module doc; ``sample``: read the system
    every two seconds in a background thread while the app runs (the live flow and charts).
    """
    guard = Guard.from_options(token=token, basic_auth=basic_auth)
    return Dashboard(app, read_only=read_only, guard=guard, redact=redact,
                     sample=sample).asgi()
