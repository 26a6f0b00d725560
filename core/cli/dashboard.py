"""``conveyor dashboard``: serve the web dashboard (``pip install 'conveyor[dashboard]'``).

The dashboard lives in :mod:`conveyor.contrib.dashboard`, imported only when this command
runs: the core never imports it.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from conveyor.cli.common import app_from, pass_state, url_options
from conveyor.cli.output import err
from conveyor.exceptions import ConfigurationError


def _redactor(spec: str | None) -> Any:
    """The function named by ``--redact package.module:function``."""
    if not spec:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"--redact {spec!r}: use package.module:function")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ConfigurationError(f"--redact {spec!r}: {attr!r} is not a function there")
    return fn


@click.command()
@url_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs --token or --basic-auth.")
@click.option("--port", default=5555, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="CONVEYOR_DASHBOARD_TOKEN", default=None,
              help="Require this bearer token (16+ characters) [env CONVEYOR_DASHBOARD_TOKEN].")
@click.option("--basic-auth", envvar="CONVEYOR_DASHBOARD_BASIC_AUTH", default=None,
              metavar="USER:PASSWORD",
              help="Require basic auth [env CONVEYOR_DASHBOARD_BASIC_AUTH].")
@click.option("--read-only", is_flag=True, help="Show no actions (retry, revoke, replay, delete).")
@click.option("--redact", default=None, metavar="MODULE:FUNCTION",
              help="Pass every task view through this function before showing it.")
@pass_state
def dashboard(state: dict[str, Any], app_path: str | None, host: str, port: int,
              token: str | None, basic_auth: str | None, read_only: bool,
              redact: str | None) -> None:
    """Serve the web dashboard: live flow, tasks, workers, dead letters, /metrics."""
    try:
        import uvicorn

        from conveyor.contrib.dashboard import Guard, check_bind, create_app
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs {getattr(exc, 'name', None) or exc}: "
            "pip install 'conveyor[dashboard]'") from exc
    check_bind(host, Guard.from_options(token=token, basic_auth=basic_auth))
    app = app_from(state, app_path)
    web = create_app(app, read_only=read_only, token=token, basic_auth=basic_auth,
                     redact=_redactor(redact))
    err.print(f"conveyor dashboard on http://{host}:{port}/ (broker {app.broker.url.masked}, "
              f"backend {app.backend.url.masked}){' read-only' if read_only else ''}",
              markup=False, highlight=False)
    uvicorn.run(web, host=host, port=port, log_level="warning")


COMMANDS = [dashboard]
