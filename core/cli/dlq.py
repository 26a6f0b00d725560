"""``conveyor dlq list|show|replay|purge``: the dead-letter queue."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.app import Conveyor
from conveyor.cli.common import app_from, app_option, json_option, pass_state, split_queues
from conveyor.cli.output import add_row, emit_json, err, fail, fields, out, table, visible, when


@click.group()
def dlq() -> None:
    """List, show, replay and purge dead letters."""


@dlq.command("list")
@app_option
@click.option("-Q", "--queue", default=None, help="Queue (default: the app's default queue).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@pass_state
def dlq_list(state: dict[str, Any], app_path: str | None, queue: str | None, limit: int,
             as_json: bool) -> None:
    """List dead letters with the reason each was dead-lettered."""
    from conveyor.dlq import view

    app = app_from(state, app_path)
    name = split_queues(queue, app)[0]
    letters = [view(app, d) for d in app.broker.dead_letters(name, limit=limit)]
    if as_json:
        emit_json([v.to_json() for v in letters])
        return
    tbl = table("message", "task id", "task", "dead at", "reason", title=f"dead letters on {name}")
    for v in letters:
        add_row(tbl, v.letter.message_id, v.task_id or "-", v.task or "(undecodable)",
                when(v.letter.dead_at), v.letter.reason)
    out.print(tbl)


def _find_dead(app: Conveyor, queue: str, ids: tuple[str, ...]) -> list[Any]:
    letters = app.broker.dead_letters(queue, limit=1_000_000)
    if not ids:
        return letters
    from conveyor.dlq import view

    wanted = set(ids)
    found = [d for d in letters if d.message_id in wanted or view(app, d).task_id in wanted]
    missing = wanted - {d.message_id for d in found} - {view(app, d).task_id for d in found}
    if missing:
        fail(f"no dead letter with id {', '.join(sorted(missing))} on queue {queue!r}")
    return found


@dlq.command("show")
@click.argument("message_id")
@app_option
@click.option("-Q", "--queue", default=None)
@json_option
@pass_state
def dlq_show(state: dict[str, Any], message_id: str, app_path: str | None, queue: str | None,
             as_json: bool) -> None:
    """Show one dead letter (by message id or task id) with its decoded message."""
    from conveyor.dlq import view

    app = app_from(state, app_path)
    v = view(app, _find_dead(app, split_queues(queue, app)[0], (message_id,))[0])
    if as_json:
        emit_json(v.to_json())
        return
    out.print(fields(
        (key, val if isinstance(val, str) else json.dumps(val, default=str))
        for key, val in v.to_json().items() if val is not None))


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@app_option
@click.option("-Q", "--queue", default=None)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of the queue.")
@json_option
@pass_state
def dlq_replay(state: dict[str, Any], ids: tuple[str, ...], app_path: str | None,
               queue: str | None, replay_all: bool, as_json: bool) -> None:
    """Send dead letters back to their queue, retry count reset."""
    from rich.progress import Progress

    from conveyor.dlq import replay

    if not ids and not replay_all:
        fail("name the dead letters to replay, or pass --all", code=2)
    app = app_from(state, app_path)
    letters = _find_dead(app, split_queues(queue, app)[0], ids)
    with Progress(console=err, transient=True, disable=as_json or len(letters) < 50) as bar:
        job = bar.add_task("replaying", total=len(letters))
        count = replay(app, letters, progress=lambda: bar.advance(job))
    if as_json:
        emit_json({"replayed": count})
    else:
        out.print(f"replayed {count} dead letters")


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@app_option
@click.option("-Q", "--queue", default=None)
@click.option("--all", "purge_all", is_flag=True, help="Delete every dead letter of the queue.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_state
def dlq_purge(state: dict[str, Any], ids: tuple[str, ...], app_path: str | None,
              queue: str | None, purge_all: bool, yes: bool, as_json: bool) -> None:
    """Delete dead letters for good."""
    if not ids and not purge_all:
        fail("name the dead letters to delete, or pass --all", code=2)
    app = app_from(state, app_path)
    name = split_queues(queue, app)[0]
    if not yes and not click.confirm(f"Delete {'all' if purge_all else len(ids)} dead letters "
                                     f"of {visible(name)}?"):
        fail("aborted")
    if purge_all:
        count = app.broker.delete_dead(name)
    else:
        count = app.broker.delete_dead(name, [d.message_id for d in _find_dead(app, name, ids)])
    if as_json:
        emit_json({"deleted": count})
    else:
        out.print(f"deleted {count} dead letters")


COMMANDS = [dlq]
