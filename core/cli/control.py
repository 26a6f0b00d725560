"""``conveyor inspect workers|active|reserved|scheduled|revoked|query-task|registered|stats`` and
``conveyor control shutdown|rate-limit|pool-grow|pool-shrink``: the worker registry and the
control channel (see :mod:`conveyor.control`)."""

from __future__ import annotations

import time
from typing import Any

import click

from conveyor.cli.common import app_from, common_options, pass_state
from conveyor.cli.output import add_row, emit_json, json_mode, out, table, visible, when

_destination = click.option("-d", "--destination", default=None,
                            help="Comma-separated worker names (default: every live worker).")


def _names(destination: str | None) -> list[str] | None:
    if not destination:
        return None
    return [d.strip() for d in destination.split(",") if d.strip()]


@click.group()
def inspect() -> None:
    """Read the worker registry: live workers, what they run, what they know."""


@inspect.command("workers")
@common_options
@_destination
@pass_state
def inspect_workers(state: dict[str, Any], app_path: str | None, as_json: bool,
                    destination: str | None) -> None:
    """Live workers: host, pid, queues, pool, concurrency, heartbeat, counts."""
    found = app_from(state, app_path).control.inspect(_names(destination)).workers()
    if as_json or json_mode():
        emit_json(found)
        return
    now = time.time()
    tbl = table("worker", "queues", "pool", "concurrency", "running", "processed", "failed",
                "started", "heartbeat", title=f"{len(found)} live workers",
                right=("concurrency", "running", "processed", "failed"), ids=("worker",))
    for name, e in sorted(found.items()):
        add_row(tbl, name, ",".join(map(str, e.get("queues", []))), e.get("pool"),
                e.get("concurrency"), len(e.get("active", [])), e.get("processed"),
                e.get("failed"), when(e.get("started")),
                f"{max(0.0, now - float(e.get('heartbeat', now))):.1f}s ago")
    out.print(tbl)


@inspect.command("active")
@common_options
@_destination
@pass_state
def inspect_active(state: dict[str, Any], app_path: str | None, as_json: bool,
                   destination: str | None) -> None:
    """Tasks running now, per worker."""
    found = app_from(state, app_path).control.inspect(_names(destination)).active()
    if as_json or json_mode():
        emit_json(found)
        return
    tbl = table("worker", "task id", "task", "started", title="running tasks",
                ids=("task id",))
    for name, tasks in sorted(found.items()):
        for t in tasks:
            add_row(tbl, name, t.get("id"), t.get("task"), when(t.get("started")))
    out.print(tbl)


@inspect.command("reserved")
@common_options
@_destination
@pass_state
def inspect_reserved(state: dict[str, Any], app_path: str | None, as_json: bool,
                     destination: str | None) -> None:
    """Messages each worker holds but has not started (its prefetch)."""
    found = app_from(state, app_path).control.inspect(_names(destination)).reserved()
    if as_json or json_mode():
        emit_json(found)
        return
    tbl = table("worker", "task id", "task", "queue", "delivery", title="reserved tasks",
                right=("delivery",), ids=("task id",))
    for name, tasks in sorted(found.items()):
        for t in tasks:
            add_row(tbl, name, t.get("id"), t.get("task"), t.get("queue"), t.get("delivery"))
    out.print(tbl)


@inspect.command("scheduled")
@common_options
@_destination
@pass_state
def inspect_scheduled(state: dict[str, Any], app_path: str | None, as_json: bool,
                      destination: str | None) -> None:
    """Celery's scheduled tasks: none here, a countdown waits in the broker."""
    found = app_from(state, app_path).control.inspect(_names(destination)).scheduled()
    if as_json or json_mode():
        emit_json(found)
        return
    out.print(f"{len(found)} live workers hold no scheduled tasks: a task with a countdown or "
              "eta waits in the broker until it is due (`conveyor queues` counts them).",
              markup=False)


@inspect.command("revoked")
@common_options
@_destination
@pass_state
def inspect_revoked(state: dict[str, Any], app_path: str | None, as_json: bool,
                    destination: str | None) -> None:
    """Revoked task ids (stored in the backend: the same for every worker)."""
    found = app_from(state, app_path).control.inspect(_names(destination)).revoked()
    if as_json or json_mode():
        emit_json(found)
        return
    ids = sorted({i for ids in found.values() for i in ids})
    out.print(f"{len(ids)} revoked task ids, held by {len(found)} live workers:", markup=False)
    for task_id in ids:
        out.print(f"  {visible(task_id)}", markup=False)


@inspect.command("query-task")
@common_options
@_destination
@click.argument("task_ids", nargs=-1, required=True)
@pass_state
def inspect_query_task(state: dict[str, Any], app_path: str | None, as_json: bool,
                       destination: str | None, task_ids: tuple[str, ...]) -> None:
    """Which worker holds each task id, and whether it is running or reserved."""
    found = app_from(state, app_path).control.inspect(_names(destination)).query_task(
        *task_ids)
    if as_json or json_mode():
        emit_json(found)
        return
    tbl = table("worker", "task id", "state", "task", title="held tasks", ids=("task id",))
    for name, held in sorted(found.items()):
        for task_id, (where, info) in sorted(held.items()):
            add_row(tbl, name, task_id, where, info.get("task"))
    out.print(tbl)


@inspect.command("registered")
@common_options
@_destination
@pass_state
def inspect_registered(state: dict[str, Any], app_path: str | None, as_json: bool,
                       destination: str | None) -> None:
    """Task names each worker knows."""
    found = app_from(state, app_path).control.inspect(_names(destination)).registered()
    if as_json or json_mode():
        emit_json(found)
        return
    for name, tasks in sorted(found.items()):
        out.print(f"{visible(name)}:", markup=False)
        for task in tasks:
            out.print(f"  {visible(task)}", markup=False)


@inspect.command("stats")
@common_options
@_destination
@pass_state
def inspect_stats(state: dict[str, Any], app_path: str | None, as_json: bool,
                  destination: str | None) -> None:
    """Each worker's registry entry (counters, settings, version)."""
    found = app_from(state, app_path).control.inspect(_names(destination)).stats()
    if as_json or json_mode():
        emit_json(found)
        return
    for name, entry in sorted(found.items()):
        tbl = table("field", "value", title=name)
        for key, value in sorted(entry.items()):
            add_row(tbl, key, value)
        out.print(tbl)


@click.group()
def control() -> None:
    """Send commands to live workers through their control queues."""


def _send(state: dict[str, Any], app_path: str | None, as_json: bool, command: str,
          destination: str | None, timeout: float, **arguments: Any) -> None:
    app = app_from(state, app_path)
    replies = app.control.broadcast(command, arguments=arguments,
                                    destination=_names(destination), reply=True,
                                    timeout=timeout)
    if as_json or json_mode():
        emit_json(replies)
        return
    if not replies:
        out.print("no worker replied", markup=False)
    for name, reply in sorted(replies.items()):
        out.print(f"{visible(name)}: {visible(reply)}", markup=False)


_timeout = click.option("--timeout", type=float, default=3.0, show_default=True,
                        help="Seconds to wait for replies.")


@control.command("shutdown")
@common_options
@_destination
@_timeout
@pass_state
def control_shutdown(state: dict[str, Any], app_path: str | None, as_json: bool,
                     destination: str | None, timeout: float) -> None:
    """Stop workers gracefully (running tasks finish first)."""
    _send(state, app_path, as_json, "shutdown", destination, timeout)


@control.command("rate-limit")
@click.argument("task_name")
@click.argument("rate")
@common_options
@_destination
@_timeout
@pass_state
def control_rate_limit(state: dict[str, Any], task_name: str, rate: str,
                       app_path: str | None, as_json: bool, destination: str | None,
                       timeout: float) -> None:
    """Set TASK_NAME's rate limit (e.g. 10/m; 0 removes it) until the workers restart."""
    _send(state, app_path, as_json, "rate_limit", destination, timeout, task=task_name,
          rate=rate)


@control.command("pool-grow")
@click.argument("n", type=click.IntRange(min=1), default=1)
@common_options
@_destination
@_timeout
@pass_state
def control_pool_grow(state: dict[str, Any], n: int, app_path: str | None, as_json: bool,
                      destination: str | None, timeout: float) -> None:
    """Add N executor threads to each worker."""
    _send(state, app_path, as_json, "pool_grow", destination, timeout, n=n)


@control.command("pool-shrink")
@click.argument("n", type=click.IntRange(min=1), default=1)
@common_options
@_destination
@_timeout
@pass_state
def control_pool_shrink(state: dict[str, Any], n: int, app_path: str | None, as_json: bool,
                        destination: str | None, timeout: float) -> None:
    """Remove N executor threads from each worker (never below one)."""
    _send(state, app_path, as_json, "pool_shrink", destination, timeout, n=n)


COMMANDS = [inspect, control]
