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
import sys
from typing import Any

import click

from conveyor.cli.common import AppLoadError, load_app
from conveyor.cli.output import ARGV_KEY, emit_json, fail, json_mode
from conveyor.exceptions import ConveyorError

__all__ = ["AppLoadError", "cli", "load_app", "main"]

_COMMAND_MODULES = (
    "conveyor.cli.worker",
    "conveyor.cli.results",
    "conveyor.cli.queues",
    "conveyor.cli.dlq",
    "conveyor.cli.admin",
    "conveyor.cli.control",
    "conveyor.cli.send",
    "conveyor.cli.conformance",
    "conveyor.cli.dashboard",
)


class ConveyorGroup(click.Group):
    """Turns every error into one clear line, or ``{"error": ...}`` under ``--json``, and a
    non-zero exit; ``--debug`` (before or after the subcommand) shows the traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Kept so a usage error found before --json was parsed is still reported as JSON.
        ctx.meta[ARGV_KEY] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            if _debug(ctx):
                raise
            fail(str(exc))
        except click.exceptions.Exit:
            raise
        except click.ClickException as exc:
            if not json_mode():
                raise
            emit_json({"error": exc.format_message()})
            sys.exit(exc.exit_code)
        except Exception as exc:
            if _debug(ctx):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)")


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug") or (isinstance(ctx.obj, dict) and ctx.obj.get("debug"))
                or os.environ.get("CONVEYOR_DEBUG"))


@click.group(cls=ConveyorGroup)
@click.option("-A", "--app", "app_path", envvar="CONVEYOR_APP",
              help="The app: module, module:attr or module.attr (imported from the current "
                   "directory). Every option here is also accepted after the subcommand.")
@click.option("--broker", help="Broker URL (beats the environment and the app).")
@click.option("--backend", help="Result backend URL (beats the environment and the app).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (errors too).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="conveyor")
@click.pass_context
def cli(ctx: click.Context, app_path: str | None, broker: str | None, backend: str | None,
        as_json: bool, debug: bool) -> None:
    """conveyor: a distributed task queue."""
    state = ctx.ensure_object(dict)
    for key, value in (("app_path", app_path), ("broker", broker), ("backend", backend),
                       ("json", as_json), ("debug", debug)):
        if value:
            state[key] = value


for _name in _COMMAND_MODULES:
    for _command in importlib.import_module(_name).COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Entry point of the ``conveyor`` command."""
    cli(prog_name="conveyor")
