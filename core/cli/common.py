"""What every command shares: loading the ``-A`` app, the common options, queue lists."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from conveyor.app import Conveyor
from conveyor.exceptions import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])


class AppLoadError(ConfigurationError):
    """``-A`` names something that cannot be imported or is not a Conveyor app."""


def load_app(path: str | None) -> Conveyor:
    """Import ``module:attribute`` (or ``module``, finding its Conveyor app) from the cwd."""
    if not path:
        return Conveyor()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(
            f"cannot import {module_name!r} (from -A {path}): {exc}. Run from the directory "
            "that contains it, or add that directory to PYTHONPATH") from exc
    if attr:
        obj = getattr(module, attr, None)
        if obj is None:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r} (from -A {path})")
    else:
        found = [v for v in vars(module).values() if isinstance(v, Conveyor)]
        if not found:
            raise AppLoadError(f"module {module_name!r} defines no Conveyor app: "
                               f"use -A {module_name}:NAME")
        obj = found[0]
    if not isinstance(obj, Conveyor):
        raise AppLoadError(f"{path} is a {type(obj).__name__}, not a Conveyor app")
    return obj


pass_state = click.make_pass_decorator(dict, ensure=True)


def app_from(state: dict[str, Any], app_path: str | None = None) -> Conveyor:
    """The app named by ``-A`` (here or on the root group), with ``--broker/--backend`` applied."""
    app = load_app(app_path or state.get("app_path"))
    changed = False
    for name, key in (("broker_url", "broker"), ("result_backend", "backend")):
        if state.get(key):
            app.conf.update({name: state[key]}, source="command line",
                            label=f"command line (--{key})")
            changed = True
    if changed:
        app.close()
    return app


app_option = click.option("-A", "--app", "app_path", help="The app, as module:attribute.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def queues_option(**kw: Any) -> Callable[[F], F]:
    """``-Q/--queues``: comma-separated queue names."""
    return click.option("-Q", "--queues", "queues", default=None,
                        help="Comma-separated queue names (default: the app's default queue).",
                        **kw)


def split_queues(queues: str | None, app: Conveyor) -> list[str]:
    """The names in a ``-Q`` value, or the app's default queue."""
    names = [q.strip() for q in (queues or "").split(",") if q.strip()]
    return names or [app.conf.task_default_queue]
