"""``conveyor dlq list|show|replay|purge``: the dead-letter queue.

Dead letters are named by message id or task id, whole or by a prefix that is unique in
the queue, in every subcommand.
"""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.app import Conveyor
from conveyor.broker import DeadLetter
from conveyor.cli.common import app_from, common_options, pass_state, split_queues
from conveyor.cli.output import (
    add_row,
    confirm,
    emit_json,
    err,
    fail,
    fields,
    json_mode,
    out,
    progress,
    table,
    when,
)

#: Time fields of a dead letter's JSON, printed as ISO 8601 in tables.
_TIMES = frozenset({"dead_at"})


@click.group()
def dlq() -> None:
    """List, show, replay and purge dead letters."""


def _queue_option(fn: Any) -> Any:
    return click.option("-Q", "--queue", default=None,
                        help="Queue (default: the app's default queue).")(fn)


@dlq.command("list")
@common_options
@_queue_option
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@pass_state
def dlq_list(state: dict[str, Any], app_path: str | None, queue: str | None, limit: int,
             as_json: bool) -> None:
    """List dead letters with the reason each was dead-lettered."""
    from conveyor.dlq import view

    app = app_from(state, app_path)
    name = split_queues(queue, app)[0]
    letters = [view(app, d) for d in app.broker.dead_letters(name, limit=limit)]
    if as_json or json_mode():
        emit_json([v.to_json() for v in letters])
        return
    # One id column: the task id, or the message id of an undecodable message; every dlq
    # command takes either.
    tbl = table("id", "task", "dead at", "reason", title=f"dead letters on {name}",
                ids=("id", "dead at"))
    for v in letters:
        add_row(tbl, v.task_id or v.letter.message_id, v.task or "(undecodable)",
                when(v.letter.dead_at), v.letter.reason)
    out.print(tbl)
    if len(letters) == limit:
        total = app.broker.stats(name).dead
        if total > limit:
            err.print(f"showing {limit} of {total} (use --limit)", markup=False)


def _find_dead(app: Conveyor, queue: str, ids: tuple[str, ...]) -> list[DeadLetter]:
    """The dead letters of ``queue`` named by ``ids`` (message or task ids, or unique
    prefixes of them); all of them when ``ids`` is empty. Fails naming any id not found."""
    letters = app.broker.dead_letters(queue, limit=1_000_000)
    if not ids:
        return letters
    from conveyor.dlq import view

    keyed = [(d, {d.message_id, view(app, d).task_id or d.message_id}) for d in letters]
    found: dict[str, DeadLetter] = {}
    missing, ambiguous = [], []
    for wanted in ids:
        exact = [d for d, keys in keyed if wanted in keys]
        matches = exact or [d for d, keys in keyed
                            if any(k.startswith(wanted) for k in keys)]
        if len(matches) == 1 or (exact and matches):
            for d in matches:
                found[d.message_id] = d
        elif matches:
            ambiguous.append(wanted)
        else:
            missing.append(wanted)
    if missing:
        fail(f"no dead letter with id {', '.join(missing)} on queue {queue!r}")
    if ambiguous:
        fail(f"id prefix {', '.join(ambiguous)} matches several dead letters on queue "
             f"{queue!r}: give more of the id")
    return list(found.values())


@dlq.command("show")
@click.argument("message_id")
@common_options
@_queue_option
@pass_state
def dlq_show(state: dict[str, Any], message_id: str, app_path: str | None, queue: str | None,
             as_json: bool) -> None:
    """Show one dead letter (by message id or task id) with its decoded message."""
    from conveyor.dlq import view

    app = app_from(state, app_path)
    v = view(app, _find_dead(app, split_queues(queue, app)[0], (message_id,))[0])
    if as_json or json_mode():
        emit_json(v.to_json())
        return
    out.print(fields(
        (key, when(val) if key in _TIMES else
         val if isinstance(val, str) else json.dumps(val, default=str))
        for key, val in v.to_json().items() if val is not None))


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@common_options
@_queue_option
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of the queue.")
@pass_state
def dlq_replay(state: dict[str, Any], ids: tuple[str, ...], app_path: str | None,
               queue: str | None, replay_all: bool, as_json: bool) -> None:
    """Send dead letters back to their queue, retry count reset."""
    from conveyor.dlq import replay

    if not ids and not replay_all:
        fail("name the dead letters to replay, or pass --all", code=2)
    app = app_from(state, app_path)
    letters = _find_dead(app, split_queues(queue, app)[0], ids)
    with progress(total=len(letters), description="replaying") as bar:
        job = bar.add_task("replay", total=len(letters))
        report = replay(app, letters, progress=lambda: bar.advance(job))
    if as_json or json_mode():
        emit_json(report.to_json())
    else:
        from conveyor.dlq import view

        left = f", skipped {len(report.skipped)} (left in the dead-letter queue)"
        out.print(f"replayed {report.replayed} dead letters"
                  f"{left if report.skipped else ''}")
        if report.skipped:
            tbl = table("id", "why it was skipped", title="skipped", ids=("id",))
            for skipped in report.skipped:
                add_row(tbl, view(app, skipped.letter).task_id or skipped.letter.message_id,
                        skipped.reason)
            out.print(tbl)


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@common_options
@_queue_option
@click.option("--all", "purge_all", is_flag=True, help="Delete every dead letter of the queue.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def dlq_purge(state: dict[str, Any], ids: tuple[str, ...], app_path: str | None,
              queue: str | None, purge_all: bool, yes: bool, as_json: bool) -> None:
    """Delete dead letters for good."""
    if not ids and not purge_all:
        fail("name the dead letters to delete, or pass --all", code=2)
    app = app_from(state, app_path)
    name = split_queues(queue, app)[0]
    if not yes:
        confirm(f"Delete {'all' if purge_all else len(ids)} dead letters of {name}?")
    if purge_all:
        count = app.broker.delete_dead(name)
    else:
        count = app.broker.delete_dead(name, [d.message_id for d in _find_dead(app, name, ids)])
    if as_json or json_mode():
        emit_json({"deleted": count})
    else:
        out.print(f"deleted {count} dead letters")


COMMANDS = [dlq]
