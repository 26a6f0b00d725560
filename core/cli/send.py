"""``conveyor call``: send a task by name from the command line (Celery's ``celery call``),
once or ``--count N`` times in batches with a progress bar."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.cli.common import app_from, common_options, pass_state
from conveyor.cli.output import emit_json, fail, json_mode, out, progress, visible

#: Messages published per batch by ``--count``.
BATCH = 500


def _json_option(value: str | None, what: str, kind: type) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        example = "'[2, 2]'" if kind is list else """'{"x": 1}'"""
        fail(f"{what} is not JSON ({exc}): give e.g. {what} {example}", code=2)
    if not isinstance(parsed, kind):
        fail(f"{what} must be a JSON {'array' if kind is list else 'object'}, not "
             f"{type(parsed).__name__}", code=2)
    return parsed


@click.command()
@click.argument("name")
@common_options
@click.option("-a", "--args", "args_json", default=None,
              help="Positional arguments as a JSON array: --args '[2, 2]'.")
@click.option("-k", "--kwargs", "kwargs_json", default=None,
              help="Keyword arguments as a JSON object: --kwargs '{\"x\": 1}'.")
@click.option("--countdown", type=float, default=None, help="Seconds to wait before running.")
@click.option("--eta", default=None, help="When to run, ISO 8601 (2030-01-31T12:00:00+00:00).")
@click.option("--expires", type=float, default=None, help="Seconds after which it is not run.")
@click.option("-Q", "--queue", default=None, help="Queue (default: routes, then the default).")
@click.option("-n", "--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Send it this many times (in batches, with a progress bar).")
@pass_state
def call(state: dict[str, Any], name: str, app_path: str | None, as_json: bool,
         args_json: str | None, kwargs_json: str | None, countdown: float | None,
         eta: str | None, expires: float | None, queue: str | None, count: int) -> None:
    """Send task NAME (it need not be importable here) and print its id."""
    args = _json_option(args_json, "--args", list)
    kwargs = _json_option(kwargs_json, "--kwargs", dict)
    app = app_from(state, app_path)
    ids: list[str] = []
    with progress(total=count, description="sending") as bar:
        job = bar.add_task("send", total=count)
        while len(ids) < count:
            batch = [app.build_message(name, args, kwargs, countdown=countdown, eta=eta,
                                       expires=expires, queue=queue)
                     for _ in range(min(BATCH, count - len(ids)))]
            app.publish(batch)
            ids.extend(o.message.id for o in batch)
            bar.advance(job, len(batch))
    app.flush_pending()
    if as_json or json_mode():
        emit_json({"id": ids[0]} if count == 1 else {"sent": count, "ids": ids})
    elif count == 1:
        out.print(visible(ids[0]), markup=False)
    else:
        out.print(f"sent {count} messages of {visible(name)} (first id {ids[0]})",
                  markup=False)


COMMANDS = [call]
