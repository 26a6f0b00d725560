"""docs/user-guide.md's "Porting from Celery" tables name only what exists: every name in
their conveyor column is looked up (imported, found as a setting or task option, or found as
a CLI command)."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import click
import pytest

from conveyor import Task
from conveyor.cli import cli
from conveyor.config import SETTING_NAMES, environment_variables

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"


def _rows() -> list[tuple[str, list[str]]]:
    text = GUIDE.read_text()
    section = text.split("## Porting from Celery", 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 3 or cells[0] in {"Celery", ""} or set(cells[0]) <= {"-"}:
            continue
        rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


def _lookup(name: str) -> Any:
    if name.startswith("conveyor "):
        command: click.Command = cli
        for word in name.split()[1:]:
            assert isinstance(command, click.Group), name
            command = command.commands[word]
        return command
    if name.startswith("CONVEYOR_"):
        return environment_variables()[name]
    if re.fullmatch(r"[a-z_]+", name):
        options = set(inspect.signature(Task.__init__).parameters) - {"self", "app", "fn"}
        assert name in SETTING_NAMES | options, f"{name} is neither a setting nor a task option"
        return name
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"cannot import {name}")


ROWS = _rows()


def test_the_porting_page_has_its_tables() -> None:
    assert len(ROWS) >= 40
    assert all(names for _, names in ROWS), [celery for celery, names in ROWS if not names]


@pytest.mark.parametrize("name", sorted({n for _, names in ROWS for n in names}))
def test_every_name_in_the_conveyor_column_exists(name: str) -> None:
    assert _lookup(name) is not None
