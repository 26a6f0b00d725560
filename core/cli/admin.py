"""``conveyor drivers``, ``conveyor check`` and ``conveyor cleanup``."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.text import Text

from conveyor.cli.common import app_from, app_option, json_option, pass_state
from conveyor.cli.output import add_row, emit_json, err, out, table, visible
from conveyor.exceptions import ConveyorError


@click.command()
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
        emit_json(rows)
        return
    tbl = table("kind", "scheme", "driver", "status", title="drivers")
    for row in rows:
        add_row(tbl, *(row[c] for c in ("kind", "scheme", "driver", "status")))
    out.print(tbl)


@click.command()
@app_option
@json_option
@pass_state
def check(state: dict[str, Any], app_path: str | None, as_json: bool) -> None:
    """Ping the broker and the backend and flag settings that contradict each other."""
    from conveyor.url import mask_password

    app = app_from(state, app_path)
    report: dict[str, Any] = {"settings": app.conf.check()}
    ok = not report["settings"]
    for kind, url, get in (("broker", app.conf.broker_url, lambda: app.broker),
                           ("backend", app.conf.result_backend, lambda: app.backend)):
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
        emit_json(report)
    else:
        for kind in ("broker", "backend"):
            r = report[kind]
            extra = " ".join(f"{k}={v}" for k, v in r.items() if k not in {"url", "ok", "ms",
                                                                             "error"})
            if r["ok"]:
                out.print(Text.assemble(("ok", "green"), visible(
                    f"   {kind} {r['url']} ({r['ms']} ms) {extra}".rstrip())), soft_wrap=True)
            else:
                err.print(Text.assemble(("FAIL", "red"),
                                        visible(f" {kind} {r['url']}: {r['error']}")))
        for problem in report["settings"]:
            err.print(Text.assemble(("FAIL", "red"), visible(f" settings: {problem}")))
    sys.exit(0 if ok else 1)


@click.command()
@app_option
@json_option
@pass_state
def cleanup(state: dict[str, Any], app_path: str | None, as_json: bool) -> None:
    """Delete expired results now (backends that do not expire them natively)."""
    app = app_from(state, app_path)
    count = app.backend.purge_expired()
    if as_json:
        emit_json({"purged": count})
    else:
        out.print(f"purged {count} expired results")


COMMANDS = [drivers, check, cleanup]
