"""``conveyor``: the command-line interface (click for commands, rich for output).

One module per command group; each exports ``COMMANDS``, the click commands it adds to the
root group. Registering a new group is one line in ``_COMMAND_MODULES``. Every command prints
tables for people and JSON with ``--json`` (errors too); output goes through
:mod:`conveyor.cli.output`, which escapes untrusted text. Errors are one line on stderr and
a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import click

from conveyor.cli.common import AppLoadError, load_app
from conveyor.cli.output import fail
from conveyor.exceptions import ConveyorError

__all__ = ["AppLoadError", "cli", "load_app", "main"]

_COMMAND_MODULES = (
    "conveyor.cli.worker",
    "conveyor.cli.results",
    "conveyor.cli.queues",
    "conveyor.cli.dlq",
    "conveyor.cli.admin",
)


class ConveyorGroup(click.Group):
    """Turns ConveyorError into one clear line (traceback only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            if ctx.params.get("debug") or os.environ.get("CONVEYOR_DEBUG"):
                raise
            fail(str(exc))


@click.group(cls=ConveyorGroup)
@click.option("-A", "--app", "app_path", envvar="CONVEYOR_APP",
              help="The app, as module:attribute (imported from the current directory).")
@click.option("--broker", help="Broker URL (overrides the app's).")
@click.option("--backend", help="Result backend URL (overrides the app's).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="conveyor")
@click.pass_context
def cli(ctx: click.Context, app_path: str | None, broker: str | None, backend: str | None,
        debug: bool) -> None:
    """conveyor: a distributed task queue."""
    ctx.obj = {"app_path": app_path, "broker": broker, "backend": backend, "debug": debug}
    if debug:
        os.environ["CONVEYOR_DEBUG"] = "1"


for _name in _COMMAND_MODULES:
    for _command in importlib.import_module(_name).COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Entry point of the ``conveyor`` command."""
    cli(prog_name="conveyor")
