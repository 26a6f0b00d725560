"""Safe printing for every command: escaped untrusted text, tables, ``--json`` output, errors.

Untrusted strings (ids, task names, reasons, args, URLs) reach a console only through these
helpers: :func:`add_row` and :func:`fields` (table cells), :func:`text` (a rich ``Text``),
:func:`visible` (plain strings printed with ``markup=False`` or through click), :func:`safe`
(inside markup) and :func:`fail`. Each prints them as plain text, never as rich markup, with
control characters shown as ``\\x1b``-style escapes, so a hostile task name can neither style
nor rewrite the terminal. With ``--json`` every output, errors included, is one JSON document
on stdout (:func:`emit_json`, :func:`fail`); :func:`json_mode` says whether it was asked for.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

out = Console(highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

# Control characters (C0, DEL, C1), zero-width and direction marks, the Unicode line and
# paragraph separators and bidi overrides: each could move the cursor, restyle, or visually
# reorder what follows.
_INVISIBLE = {*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x200B, 0x2010), 0x2028, 0x2029,
              *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF}
_VISIBLE = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _INVISIBLE}
_VISIBLE[0x09] = "\\t"
_VISIBLE[0x0A] = "\\n"
_VISIBLE[0x0D] = "\\r"


def visible(value: object) -> str:
    """``str(value)`` with control characters replaced by backslash escapes."""
    return str(value).translate(_VISIBLE)


def safe(value: object) -> str:
    """Untrusted text made safe to embed in rich markup: controls visible, markup escaped."""
    return escape(visible(value))


def text(value: object, style: str = "") -> Text:
    """Untrusted text as a rich ``Text`` (never parsed as markup), controls visible."""
    return Text(visible(value), style=style)


#: Where the root group keeps the raw arguments, in ``ctx.meta``.
ARGV_KEY = "conveyor.argv"


def json_mode() -> bool:
    """True when ``--json`` was given, before or after the subcommand."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    argv = ctx.meta.get(ARGV_KEY, [])
    if "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv:
        return True
    while ctx is not None:
        if ctx.params.get("as_json") or (isinstance(ctx.obj, dict) and ctx.obj.get("json")):
            return True
        ctx = ctx.parent
    return False


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (unknown types through ``str``)."""
    click.echo(json.dumps(data, indent=2, default=str))


def fail(message: str, *, code: int = 1) -> NoReturn:
    """One-line error and exit ``code``: ``{"error": ...}`` on stdout under ``--json``.

    ``message`` is printed as plain text (never markup), with control characters visible.
    """
    if json_mode():
        emit_json({"error": visible(message)})
    else:
        err.print(Text.assemble(("error:", "red"), " ", visible(message)))
    sys.exit(code)


def confirm(question: str) -> None:
    """Ask ``question`` on stderr and exit 1 ("aborted") unless the answer is yes. Under
    ``--json`` nobody can answer: exit 2 asking for ``--yes``."""
    if json_mode():
        fail("--json cannot ask for confirmation: add --yes", code=2)
    if not click.confirm(visible(question), err=True):
        fail("aborted")


def when(ts: float | None) -> str:
    """An epoch time as ISO 8601 in local time, to the second, with its UTC offset
    (``2026-12-04T18:48:36+00:00``); ``-`` for None. JSON output keeps the epoch numbers."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def table(*columns: str, title: str | None = None, right: Iterable[str] = (),
          ids: Iterable[str] = ()) -> Table:
    """A table with the given column names; ``title`` is plain text (never markup).

    Columns named in ``ids`` are never cut or wrapped (see :func:`add_row`), so an id can be
    copied from the table into the next command.
    """
    aligned, whole = set(right), set(ids)
    tbl = Table(title=Text(title) if title is not None else None)
    for col in columns:
        tbl.add_column(col, justify="right" if col in aligned else "left",
                       overflow="fold", no_wrap=col in whole)
    return tbl


def add_row(tbl: Table, *cells: object) -> None:
    """Add a row of untrusted cells: each printed as plain text, never as markup."""
    texts = [text("-" if c is None else c) for c in cells]
    for column, cell in zip(tbl.columns, texts, strict=False):
        if column.no_wrap:
            column.min_width = max(column.min_width or 0, cell.cell_len)
    tbl.add_row(*texts)


def fields(pairs: Iterable[tuple[str, object]]) -> Table:
    """A two-column key/value table (keys bold); values are untrusted plain text."""
    tbl = Table(show_header=False, box=None)
    tbl.add_column(no_wrap=True)
    tbl.add_column(overflow="fold")
    for key, val in pairs:
        tbl.add_row(Text(key, style="bold"), text("-" if val is None else val))
    return tbl


def progress(*, total: int | None, description: str, at_least: int = 50) -> Progress:
    """A transient progress bar on stderr; silent under ``--json`` or when there is little
    to do (fewer than ``at_least`` items)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True,
                    disable=json_mode() or (total is not None and total < at_least))
