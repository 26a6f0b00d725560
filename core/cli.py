"""``conveyor``: the command-line interface (click for commands, rich for tables).

Every command prints tables for people and JSON with ``--json``. Errors are one line on
stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.exceptions import ConfigurationError, ConveyorError

out = Console()
err = Console(stderr=True, soft_wrap=True)


class AppLoadError(ConfigurationError):
    """``-A`` names something that cannot be imported or is not a Conveyor app."""


def load_app(path: str | None) -> Conveyor:
    """Import ``module:attribute`` (or ``module``, finding its Conveyor app) from the cwd."""
    if not path:
        return Conveyor()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(
            f"cannot import {module_name!r} (from -A {path}): {exc}. Run from the directory "
            "that contains it, or add that directory to PYTHONPATH") from exc
    if attr:
        obj = getattr(module, attr, None)
        if obj is None:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r} (from -A {path})")
    else:
        found = [v for v in vars(module).values() if isinstance(v, Conveyor)]
        if not found:
            raise AppLoadError(f"module {module_name!r} defines no Conveyor app: "
                               f"use -A {module_name}:NAME")
        obj = found[0]
    if not isinstance(obj, Conveyor):
        raise AppLoadError(f"{path} is a {type(obj).__name__}, not a Conveyor app")
    return obj


def _fail(message: str, *, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    sys.exit(code)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="milliseconds")


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class ConveyorGroup(click.Group):
    """Turns ConveyorError into one clear line (traceback only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            if ctx.params.get("debug") or os.environ.get("CONVEYOR_DEBUG"):
                raise
            _fail(str(exc))


pass_state = click.make_pass_decorator(dict, ensure=True)


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


def _app(state: dict[str, Any], app_path: str | None = None) -> Conveyor:
    app = load_app(app_path or state.get("app_path"))
    overrides = {k: v for k, v in (("broker_url", state.get("broker")),
                                   ("result_backend", state.get("backend"))) if v}
    if overrides:
        app.conf.update(overrides)
        app.close()
    return app


app_option = click.option("-A", "--app", "app_path", help="The app, as module:attribute.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _queues_option(**kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("-Q", "--queues", "queues", default=None,
                        help="Comma-separated queue names (default: the app's default queue).",
                        **kw)


def _split(queues: str | None, app: Conveyor) -> list[str]:
    names = [q.strip() for q in (queues or "").split(",") if q.strip()]
    return names or [app.conf.task_default_queue]


# -- worker ---------------------------------------------------------------------------------
@cli.command()
@app_option
@_queues_option()
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=None,
              help="Threads (threads pool) or processes (processes pool).")
@click.option("--pool", type=click.Choice(["threads", "processes"]), default=None)
@click.option("--threads", "threads_per_process", type=click.IntRange(min=1), default=1,
              show_default=True, help="Threads in each process of the processes pool.")
@click.option("--prefetch-multiplier", type=click.IntRange(min=1), default=None)
@click.option("-n", "--hostname", default=None, help="Name of this worker in histories.")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@pass_state
def worker(state: dict[str, Any], app_path: str | None, queues: str | None,
           concurrency: int | None, pool: str | None, threads_per_process: int,
           prefetch_multiplier: int | None, hostname: str | None, loglevel: str) -> None:
    """Run a worker: reserve tasks from QUEUES and run them."""
    logging.basicConfig(level=loglevel.upper(), stream=sys.stderr,
                        format="[%(asctime)s %(levelname)s %(processName)s] %(message)s")
    app = _app(state, app_path)
    pool = pool or app.conf.worker_pool
    names = _split(queues, app)
    if pool == "processes":
        from conveyor.worker.supervisor import Supervisor

        child = ["worker", "-A", app_path or state.get("app_path") or "", "-Q", ",".join(names),
                 "--pool", "threads", "-c", str(threads_per_process), "-l", loglevel]
        if not (app_path or state.get("app_path")):
            child = [a for a in child if a not in ("-A", "")]
        if prefetch_multiplier:
            child += ["--prefetch-multiplier", str(prefetch_multiplier)]
        prefix = []
        for flag, key in (("--broker", "broker"), ("--backend", "backend")):
            if state.get(key):
                prefix += [flag, state[key]]
        sys.exit(Supervisor([*prefix, *child],
                            processes=concurrency or app.conf.worker_concurrency).run())

    from conveyor.worker.consumer import Consumer

    consumer = Consumer(app, queues=names, concurrency=concurrency,
                        prefetch_multiplier=prefetch_multiplier, hostname=hostname)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: object) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            logging.getLogger("conveyor.worker").warning("second signal: exiting now")
            os._exit(1)
        logging.getLogger("conveyor.worker").info(
            "signal %d: finishing running tasks (send again to exit at once)", signum)
        consumer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = consumer.run()
    logging.getLogger("conveyor.worker").info("worker stopped after %d messages",
                                              consumer.processed)
    sys.exit(code)


# -- result ---------------------------------------------------------------------------------
@cli.command()
@click.argument("task_id")
@app_option
@json_option
@pass_state
def result(state: dict[str, Any], task_id: str, app_path: str | None, as_json: bool) -> None:
    """Show a task's state, retries, attempt history and traceback."""
    app = _app(state, app_path)
    record = app.record(task_id)
    if record is None:
        _fail(f"no record of task {task_id}: it was never sent, was forgotten, or expired "
              f"(backend {app.backend.url.masked})")
    res = app.AsyncResult(task_id)
    value: Any = None
    if record.state == "SUCCESS":
        value = res.result
    if as_json:
        from dataclasses import asdict

        data = asdict(record)
        data["result"] = value
        _emit_json(data)
        return
    table = Table(show_header=False, box=None)
    for key, val in (("id", record.task_id), ("task", record.task), ("state", record.state),
                     ("queue", record.queue), ("retries", record.retries),
                     ("worker", record.worker), ("done", _when(record.date_done)),
                     ("result", repr(value) if record.state == "SUCCESS" else "-"),
                     ("error", f"{record.error_type}: {record.error_message}"
                      if record.error_type else "-"),
                     ("dead letter", record.dead_letter_reason or "-")):
        table.add_row(f"[bold]{key}[/bold]", str(val))
    out.print(table)
    if record.attempts:
        attempts = Table(title="attempts")
        for col in ("#", "worker", "started", "finished", "outcome", "error"):
            attempts.add_column(col)
        for a in record.attempts:
            attempts.add_row(str(a.get("number")), str(a.get("worker") or "-"),
                             _when(a.get("started_at")), _when(a.get("finished_at")),
                             str(a.get("outcome")),
                             f"{a.get('error_type')}: {a.get('error_message')}"
                             if a.get("error_type") else "")
        out.print(attempts)
    if record.traceback:
        out.print(record.traceback, highlight=False, markup=False)


# -- queues / purge -------------------------------------------------------------------------
@cli.command()
@app_option
@_queues_option()
@json_option
@pass_state
def queues(state: dict[str, Any], app_path: str | None, queues: str | None,
           as_json: bool) -> None:
    """Ready, delayed, reserved and dead messages per queue."""
    app = _app(state, app_path)
    names = sorted(set(_split(queues, app)) | (set() if queues else set(app.broker.queues())))
    stats = [app.broker.stats(name) for name in names]
    if as_json:
        _emit_json([s.__dict__ for s in stats])
        return
    table = Table(title=f"queues on {app.broker.url.masked}")
    for col in ("queue", "ready", "delayed", "reserved", "dead"):
        table.add_column(col, justify="left" if col == "queue" else "right")
    for s in stats:
        table.add_row(s.queue, str(s.ready), str(s.delayed), str(s.reserved), str(s.dead))
    out.print(table)


@cli.command()
@app_option
@_queues_option()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_state
def purge(state: dict[str, Any], app_path: str | None, queues: str | None, yes: bool,
          as_json: bool) -> None:
    """Delete ready and delayed messages (not running ones, not dead letters)."""
    app = _app(state, app_path)
    names = _split(queues, app)
    if not yes and not click.confirm(f"Delete all waiting messages on {', '.join(names)}?"):
        _fail("aborted")
    counts = {name: app.broker.purge(name) for name in names}
    if as_json:
        _emit_json(counts)
    else:
        for name, n in counts.items():
            out.print(f"purged {n} messages from {name}")


# -- dead-letter queue ----------------------------------------------------------------------
@cli.group()
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

    app = _app(state, app_path)
    letters = [view(app, d) for d in app.broker.dead_letters(_split(queue, app)[0], limit=limit)]
    if as_json:
        _emit_json([v.to_json() for v in letters])
        return
    table = Table(title=f"dead letters on {_split(queue, app)[0]}")
    for col in ("message", "task id", "task", "dead at", "reason"):
        table.add_column(col)
    for v in letters:
        table.add_row(v.letter.message_id, v.task_id or "-", v.task or "(undecodable)",
                      _when(v.letter.dead_at), v.letter.reason)
    out.print(table)


def _find_dead(app: Conveyor, queue: str, ids: tuple[str, ...]) -> list[Any]:
    letters = app.broker.dead_letters(queue, limit=1_000_000)
    if not ids:
        return letters
    from conveyor.dlq import view

    wanted = set(ids)
    found = [d for d in letters if d.message_id in wanted or view(app, d).task_id in wanted]
    missing = wanted - {d.message_id for d in found} - {view(app, d).task_id for d in found}
    if missing:
        _fail(f"no dead letter with id {', '.join(sorted(missing))} on queue {queue!r}")
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

    app = _app(state, app_path)
    v = view(app, _find_dead(app, _split(queue, app)[0], (message_id,))[0])
    if as_json:
        _emit_json(v.to_json())
        return
    table = Table(show_header=False, box=None)
    for key, val in v.to_json().items():
        if val is not None:
            table.add_row(f"[bold]{key}[/bold]", json.dumps(val, default=str)
                          if not isinstance(val, str) else val)
    out.print(table)


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
        _fail("name the dead letters to replay, or pass --all", code=2)
    app = _app(state, app_path)
    letters = _find_dead(app, _split(queue, app)[0], ids)
    with Progress(console=err, transient=True, disable=as_json or len(letters) < 50) as bar:
        job = bar.add_task("replaying", total=len(letters))
        count = replay(app, letters, progress=lambda: bar.advance(job))
    if as_json:
        _emit_json({"replayed": count})
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
        _fail("name the dead letters to delete, or pass --all", code=2)
    app = _app(state, app_path)
    name = _split(queue, app)[0]
    if not yes and not click.confirm(f"Delete {'all' if purge_all else len(ids)} dead letters "
                                     f"of {name}?"):
        _fail("aborted")
    if purge_all:
        count = app.broker.delete_dead(name)
    else:
        count = app.broker.delete_dead(name, [d.message_id for d in _find_dead(app, name, ids)])
    if as_json:
        _emit_json({"deleted": count})
    else:
        out.print(f"deleted {count} dead letters")


# -- drivers / check / cleanup --------------------------------------------------------------
@cli.command()
@json_option
def drivers(as_json: bool) -> None:
    """List the registered broker and backend drivers and whether they can load."""
    from conveyor.registry import BACKEND_GROUP, BROKER_GROUP, _entry_points, find_driver
    from conveyor.url import URL

    rows = []
    for kind, group in (("broker", BROKER_GROUP), ("backend", BACKEND_GROUP)):
        for scheme, ep in sorted(_entry_points(group).items()):
            try:
                find_driver(group, URL(f"{scheme}://x"))
                status = "ok"
            except ConveyorError as exc:
                status = str(exc).split(": ", 1)[-1]
            rows.append({"kind": kind, "scheme": scheme, "driver": ep.value, "status": status})
    if as_json:
        _emit_json(rows)
        return
    table = Table(title="drivers")
    for col in ("kind", "scheme", "driver", "status"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(row[c] for c in ("kind", "scheme", "driver", "status")))
    out.print(table)


@cli.command()
@app_option
@json_option
@pass_state
def check(state: dict[str, Any], app_path: str | None, as_json: bool) -> None:
    """Ping the broker and the backend and flag settings that contradict each other."""
    app = _app(state, app_path)
    report: dict[str, Any] = {"settings": app.conf.check()}
    ok = not report["settings"]
    for kind, url, get in (("broker", app.conf.broker_url, lambda: app.broker),
                           ("backend", app.conf.result_backend, lambda: app.backend)):
        from conveyor.url import mask_password

        started = time.perf_counter()
        try:
            driver = get()
            driver.ping()
            report[kind] = {"url": mask_password(url), "ok": True,
                            "ms": round((time.perf_counter() - started) * 1000, 2),
                            **driver.info()}
        except ConveyorError as exc:
            ok = False
            report[kind] = {"url": mask_password(url), "ok": False, "error": str(exc)}
    if as_json:
        _emit_json(report)
    else:
        for kind in ("broker", "backend"):
            r = report[kind]
            extra = " ".join(f"{k}={v}" for k, v in r.items() if k not in {"url", "ok", "ms",
                                                                             "error"})
            if r["ok"]:
                out.print(f"[green]ok[/green]   {kind} {r['url']} ({r['ms']} ms) {extra}".rstrip(),
                          soft_wrap=True)
            else:
                err.print(f"[red]FAIL[/red] {kind} {r['url']}: {r['error']}", highlight=False)
        for problem in report["settings"]:
            err.print(f"[red]FAIL[/red] settings: {problem}", highlight=False)
    sys.exit(0 if ok else 1)


@cli.command()
@app_option
@json_option
@pass_state
def cleanup(state: dict[str, Any], app_path: str | None, as_json: bool) -> None:
    """Delete expired results now (backends that do not expire them natively)."""
    app = _app(state, app_path)
    count = app.backend.purge_expired()
    if as_json:
        _emit_json({"purged": count})
    else:
        out.print(f"purged {count} expired results")


def main() -> None:
    """Entry point of the ``conveyor`` command."""
    cli(prog_name="conveyor")
