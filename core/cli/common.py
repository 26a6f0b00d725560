"""What every command shares: loading the ``-A`` app, the common options, queue lists.

A command module decorates each command with :func:`common_options` (``-A``, ``--broker``,
``--backend``, ``--json``, ``--debug``, all also accepted before the subcommand) and gets its
app from :func:`app_from`::

    @click.command()
    @common_options
    @pass_state
    def mine(state: dict[str, Any], app_path: str | None, as_json: bool) -> None:
        app = app_from(state, app_path)
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import click

from conveyor.app import Conveyor
from conveyor.exceptions import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])


class AppLoadError(ConfigurationError):
    """``-A`` names something that cannot be imported or is not a Conveyor app."""


def load_app(path: str | None) -> Conveyor:
    """The app ``-A`` names, imported from the current directory, in Celery's forms:
    ``module:attr`` (``attr`` may be dotted), ``module.attr``, or ``module``: its attribute
    ``app`` or ``celery``, else the one Conveyor app it holds, else (a package) the app of
    its ``celery`` submodule. No path: a default app.

    Raises :class:`AppLoadError` with one line naming the problem; an exception raised while
    importing the module is named with its file and line (and chained, for ``--debug``).
    """
    if not path:
        return Conveyor()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, colon, attr = path.partition(":")
    if module_name.endswith(".py") or os.sep in module_name:
        raise AppLoadError(_cannot_import(module_name, path))
    if colon:
        return _attribute(_import(module_name, path), attr, path)
    try:
        module = _import(module_name, path, missing_ok=True)
    except _NoSuchModuleError:
        parent, dot, attr = module_name.rpartition(".")
        if not dot:
            raise AppLoadError(_cannot_import(module_name, path)) from None
        try:
            module = _import(parent, path, missing_ok=True)
        except _NoSuchModuleError:
            raise AppLoadError(_cannot_import(module_name, path)) from None
        return _attribute(module, attr, path)
    return _find_in(module, path)


class _NoSuchModuleError(Exception):
    """The module itself does not exist (not: it exists and fails to import)."""


def _cannot_import(module_name: str, path: str) -> str:
    if module_name.endswith(".py") or os.sep in module_name:
        dotted = module_name.removesuffix(".py").strip(os.sep).replace(os.sep, ".")
        return (f"-A takes a module name, not a file path: -A {dotted} (run from the "
                "directory that contains it)")
    return (f"cannot import {module_name!r} (from -A {path}): no such module. Run from the "
            "directory that contains it, or add that directory to PYTHONPATH")


def _import(module_name: str, path: str, *, missing_ok: bool = False) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name
                                     or module_name.startswith(f"{exc.name}.")):
            if missing_ok:
                raise _NoSuchModuleError from exc
            raise AppLoadError(_cannot_import(module_name, path)) from exc
        raise AppLoadError(_failed_import(module_name, path, exc)) from exc
    except Exception as exc:
        raise AppLoadError(_failed_import(module_name, path, exc)) from exc


def _failed_import(module_name: str, path: str, exc: BaseException) -> str:
    """``error in module 'shop' at shop.py, line 3 (...): SyntaxError: ...``: the place is the
    innermost frame, or the file and line a SyntaxError names."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" at {_short(exc.filename)}, line {exc.lineno}"
        detail = exc.msg
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        user = [f for f in frames if "importlib" not in f.filename] or frames
        if user:
            where = f" at {_short(user[-1].filename)}, line {user[-1].lineno}"
        detail = str(exc)
    return (f"error in module {module_name!r}{where} (from -A {path}): "
            f"{type(exc).__name__}: {detail} (--debug shows the traceback)")


def _short(filename: str) -> str:
    try:
        return os.path.relpath(filename)
    except ValueError:
        return filename


def _attribute(module: ModuleType, attr: str, path: str) -> Conveyor:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AppLoadError(f"module {module.__name__!r} has no attribute {attr!r} "
                               f"(from -A {path})")
        obj = getattr(obj, part)
    if not isinstance(obj, Conveyor):
        raise AppLoadError(f"{path} is a {type(obj).__name__}, not a Conveyor app")
    return obj


def _find_in(module: ModuleType, path: str) -> Conveyor:
    for name in ("app", "celery"):
        if isinstance(getattr(module, name, None), Conveyor):
            return getattr(module, name)  # type: ignore[no-any-return]
    found = {name: v for name, v in vars(module).items() if isinstance(v, Conveyor)}
    if not found and hasattr(module, "__path__"):
        # Celery's layout: the app lives in the package's ``celery`` module (proj/celery.py).
        try:
            return _find_in(_import(f"{module.__name__}.celery", path, missing_ok=True), path)
        except _NoSuchModuleError:
            pass
    if len(found) == 1:
        return next(iter(found.values()))
    if found:
        raise AppLoadError(f"module {module.__name__!r} holds {len(found)} Conveyor apps "
                           f"({', '.join(sorted(found))}): use -A {path}:NAME")
    raise AppLoadError(f"module {module.__name__!r} defines no Conveyor app: "
                       f"use -A {path}:NAME")


pass_state = click.make_pass_decorator(dict, ensure=True)


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback keeping a given value in the shared state, so an option given
    after the subcommand counts like one given before it."""
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value:
            root = ctx.find_root()
            if not isinstance(root.obj, dict):
                root.obj = {}
            root.obj[key] = value
            ctx.ensure_object(dict)[key] = value
        return value
    return callback


def app_from(state: dict[str, Any], app_path: str | None = None) -> Conveyor:
    """The app named by ``-A`` (here or on the root group), with ``--broker/--backend`` applied
    as the command-line layer of its configuration (which beats the environment)."""
    app = load_app(app_path or state.get("app_path"))
    changed = False
    for name, key in (("broker_url", "broker"), ("result_backend", "backend")):
        if state.get(key):
            app.conf.set_layer("command line", {name: state[key]},
                               label=f"command line (--{key})")
            changed = True
    if changed:
        app.close()
    return app


app_option = click.option(
    "-A", "--app", "app_path", callback=_remember("app_path"),
    help="The app: module, module:attr or module.attr (imported from the current directory).")
json_option = click.option("--json", "as_json", is_flag=True, callback=_remember("json"),
                           help="Print JSON for scripts (errors too).")
broker_option = click.option("--broker", expose_value=False, callback=_remember("broker"),
                             help="Broker URL (beats the environment and the app).")
backend_option = click.option("--backend", expose_value=False, callback=_remember("backend"),
                              help="Result backend URL (beats the environment and the app).")
debug_option = click.option("--debug", is_flag=True, expose_value=False,
                            callback=_remember("debug"), help="Show tracebacks on errors.")


def common_options(fn: F) -> F:
    """``-A``, ``--broker``, ``--backend``, ``--json`` and ``--debug`` on a command; the
    command receives ``app_path`` and ``as_json``."""
    for option in (debug_option, backend_option, broker_option, json_option, app_option):
        fn = option(fn)
    return fn


def url_options(fn: F) -> F:
    """``-A``, ``--broker``, ``--backend`` and ``--debug`` (for commands without ``--json``)."""
    for option in (debug_option, backend_option, broker_option, app_option):
        fn = option(fn)
    return fn


def queues_option(**kw: Any) -> Callable[[F], F]:
    """``-Q/--queues``: comma-separated queue names."""
    return click.option("-Q", "--queues", "queues", default=None,
                        help="Comma-separated queue names (default: the app's default queue).",
                        **kw)


def split_queues(queues: str | None, app: Conveyor) -> list[str]:
    """The names in a ``-Q`` value, or the app's default queue."""
    names = [q.strip() for q in (queues or "").split(",") if q.strip()]
    return names or [app.conf.task_default_queue]
