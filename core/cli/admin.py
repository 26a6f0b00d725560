"""``conveyor drivers``, ``conveyor check`` and ``conveyor cleanup``."""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any

import click
from rich.text import Text

from conveyor.cli.common import app_from, common_options, pass_state
from conveyor.cli.output import (
    add_row,
    emit_json,
    err,
    json_mode,
    out,
    progress,
    table,
    visible,
)
from conveyor.exceptions import ConveyorError

#: The client library each extra installs (what ``conveyor drivers`` imports to check it).
CLIENT_FOR_EXTRA = {"redis": "redis", "postgres": "psycopg", "mysql": "pymysql",
                    "aws": "boto3", "mongodb": "pymongo"}


def driver_status(group: str, scheme: str) -> str:
    """``ok``, or what is missing: the driver module, or its client library with the
    ``pip install 'conveyor[extra]'`` that brings it."""
    from conveyor.registry import EXTRA_FOR_SCHEME, find_driver
    from conveyor.url import URL

    try:
        find_driver(group, URL(f"{scheme}://x"))
    except ConveyorError as exc:
        return str(exc).split(": ", 1)[-1]
    extra = EXTRA_FOR_SCHEME.get(scheme) or EXTRA_FOR_SCHEME.get(scheme.partition("+")[0])
    client = CLIENT_FOR_EXTRA.get(extra or "")
    if client is None:
        return "ok"
    try:
        importlib.import_module(client)
    except ImportError:
        return f"needs pip install 'conveyor[{extra}]' ({client} is not installed)"
    return "ok"


@click.command()
@common_options
def drivers(app_path: str | None, as_json: bool) -> None:
    """List the registered broker and backend drivers and whether they can load (the driver
    and its client library)."""
    from conveyor.registry import BACKEND_GROUP, BROKER_GROUP, _entry_points

    rows = [{"kind": kind, "scheme": scheme, "driver": ep.value,
             "status": driver_status(group, scheme)}
            for kind, group in (("broker", BROKER_GROUP), ("backend", BACKEND_GROUP))
            for scheme, ep in sorted(_entry_points(group).items())]
    if as_json or json_mode():
        emit_json(rows)
        return
    tbl = table("kind", "scheme", "driver", "status", title="drivers")
    for row in rows:
        add_row(tbl, *(row[c] for c in ("kind", "scheme", "driver", "status")))
    out.print(tbl)


def _shown(name: str, value: Any) -> Any:
    """A setting's value safe to print: URLs masked, keys and secrets hidden."""
    from conveyor.url import mask_password

    if value is None:
        return None
    if name in {"broker_url", "result_backend"}:
        return mask_password(str(value))
    if any(word in name for word in ("key", "secret", "password", "token")):
        return "***"
    return value


@click.command()
@common_options
@click.option("--all", "show_all", is_flag=True, help="List every setting, defaults too.")
@pass_state
def check(state: dict[str, Any], app_path: str | None, as_json: bool, show_all: bool) -> None:
    """Ping the broker and the backend, flag settings that contradict each other, and say
    where each setting came from (command line, environment, code or default)."""
    from conveyor.config import SETTING_NAMES
    from conveyor.url import mask_password

    app = app_from(state, app_path)
    conf = app.conf
    report: dict[str, Any] = {
        "problems": conf.check(),
        "config": {name: {"value": _shown(name, getattr(conf, name)),
                          "source": conf.source(name)} for name in sorted(SETTING_NAMES)}}
    ok = not report["problems"]
    for kind, url, get in (("broker", conf.broker_url, lambda: app.broker),
                           ("backend", conf.result_backend, lambda: app.backend)):
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
    if as_json or json_mode():
        emit_json(report)
        sys.exit(0 if ok else 1)
    for kind, name in (("broker", "broker_url"), ("backend", "result_backend")):
        r = report[kind]
        shown = ("(the broker's URL)" if kind == "backend"
                 and conf.result_backend == conf.broker_url else r["url"])
        shown += f", from {conf.source(name)}"
        extra = " ".join(f"{k}={v}" for k, v in r.items()
                         if k not in {"url", "ok", "ms", "error"})
        if r["ok"]:
            out.print(Text.assemble(("ok  ", "green"), visible(
                f" {kind:<8}{shown} ({r['ms']} ms) {extra}".rstrip())), soft_wrap=True)
        else:
            err.print(Text.assemble(("FAIL", "red"),
                                    visible(f" {kind:<8}{shown}: {r['error']}")))
    for problem in report["problems"]:
        err.print(Text.assemble(("FAIL", "red"), visible(f" settings: {problem}")))
    rows = [(name, entry) for name, entry in report["config"].items()
            if name not in {"broker_url", "result_backend"}
            and (show_all or entry["source"] != "default")]
    if rows:
        tbl = table("setting", "value", "from",
                    title="settings" if show_all else "settings not at their default")
        for name, entry in rows:
            add_row(tbl, name, repr(entry["value"]) if not isinstance(entry["value"], str)
                    else entry["value"], entry["source"])
        out.print(tbl)
    elif not show_all:
        out.print("every other setting is at its default (--all lists them)")
    sys.exit(0 if ok else 1)


@click.command()
@common_options
@pass_state
def cleanup(state: dict[str, Any], app_path: str | None, as_json: bool) -> None:
    """Delete expired results now (backends that do not expire them natively)."""
    app = app_from(state, app_path)
    with progress(total=None, description="deleting expired results", at_least=0) as bar:
        bar.add_task("cleanup", total=None)
        count = app.backend.purge_expired()
    if as_json or json_mode():
        emit_json({"purged": count})
    else:
        out.print(f"purged {count} expired results")


COMMANDS = [drivers, check, cleanup]
