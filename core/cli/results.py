"""``conveyor result``: one task's state, retries, attempt history and traceback."""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from conveyor.canvas.tree import render, workflow
from conveyor.cli.common import app_from, common_options, pass_state
from conveyor.cli.output import (
    add_row,
    emit_json,
    fail,
    fields,
    json_mode,
    out,
    table,
    visible,
    when,
)


@click.command()
@click.argument("task_id")
@common_options
@pass_state
def result(state: dict[str, Any], task_id: str, app_path: str | None, as_json: bool) -> None:
    """Show a task's state, retries, attempt history and traceback."""
    app = app_from(state, app_path)
    record = app.record(task_id)
    if record is None:
        fail(f"no record of task {task_id}: it was never sent, was forgotten, or expired "
             f"(backend {app.backend.url.masked})")
    res = app.AsyncResult(task_id)
    value: Any = None
    if record.state == "SUCCESS":
        value = res.result
    if as_json or json_mode():
        from dataclasses import asdict

        data = asdict(record)
        data["result"] = value
        data["workflow"] = workflow(app, task_id)
        emit_json(data)
        return
    out.print(fields((
        ("id", record.task_id), ("task", record.task), ("state", record.state),
        ("queue", record.queue), ("retries", record.retries), ("worker", record.worker),
        ("done", when(record.date_done)),
        ("result", repr(value) if record.state == "SUCCESS" else "-"),
        ("error", f"{record.error_type}: {record.error_message}" if record.error_type else "-"),
        ("dead letter", record.dead_letter_reason or "-"))))
    if record.attempts:
        attempts = table("#", "worker", "started", "finished", "outcome", "error",
                         title="attempts")
        for a in record.attempts:
            add_row(attempts, a.get("number"), a.get("worker") or "-",
                    when(a.get("started_at")), when(a.get("finished_at")), a.get("outcome"),
                    f"{a.get('error_type')}: {a.get('error_message')}"
                    if a.get("error_type") else "")
        out.print(attempts)
    for line in render(workflow(app, task_id)):
        out.print(Text(visible(line)))
    if record.traceback:
        out.print(_traceback(record.traceback))


def _traceback(tb: str) -> Text:
    # Keep the traceback's own line breaks; make every other control character visible.
    return Text("\n".join(visible(line) for line in tb.rstrip("\n").split("\n")))


COMMANDS = [result]
