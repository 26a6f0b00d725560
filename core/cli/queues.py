"""``conveyor queues`` and ``conveyor purge``."""

from __future__ import annotations

from typing import Any

import click

from conveyor.cli.common import app_from, common_options, pass_state, queues_option, split_queues
from conveyor.cli.output import (
    add_row,
    confirm,
    emit_json,
    json_mode,
    out,
    progress,
    table,
    visible,
)


@click.command()
@common_options
@queues_option()
@pass_state
def queues(state: dict[str, Any], app_path: str | None, queues: str | None,
           as_json: bool) -> None:
    """Ready, delayed, reserved and dead messages per queue."""
    app = app_from(state, app_path)
    # Workers' control queues (conveyor.control.channel) are plumbing, not task queues.
    known = set() if queues else {q for q in app.broker.queues()
                                  if not q.startswith("conveyor-control-")}
    names = sorted(set(split_queues(queues, app)) | known)
    stats = [app.broker.stats(name) for name in names]
    if as_json or json_mode():
        emit_json([s.__dict__ for s in stats])
        return
    tbl = table("queue", "ready", "delayed", "reserved", "dead",
                title=f"queues on {app.broker.url.masked}",
                right=("ready", "delayed", "reserved", "dead"))
    for s in stats:
        add_row(tbl, s.queue, s.ready, s.delayed, s.reserved, s.dead)
    out.print(tbl)


@click.command()
@common_options
@queues_option()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def purge(state: dict[str, Any], app_path: str | None, queues: str | None, yes: bool,
          as_json: bool) -> None:
    """Delete ready and delayed messages (not running ones, not dead letters)."""
    app = app_from(state, app_path)
    names = split_queues(queues, app)
    if not yes:
        confirm(f"Delete all waiting messages on {', '.join(names)}?")
    counts: dict[str, int] = {}
    with progress(total=len(names), description="purging", at_least=0) as bar:
        job = bar.add_task("purge", total=len(names))
        for name in names:
            counts[name] = app.broker.purge(name)
            bar.advance(job)
    if as_json or json_mode():
        emit_json(counts)
    else:
        for name, n in counts.items():
            out.print(f"purged {n} messages from {visible(name)}", markup=False)


COMMANDS = [queues, purge]
