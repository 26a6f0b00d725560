"""Typing: @app.task carries the function's parameters and return type to ``delay``,
``apply_async``, ``__call__`` and ``AsyncResult.get()``. mypy must accept tests/typechecks/
typed_tasks.py (``assert_type`` checks) and reject every marked line of typed_mistakes.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.servers import in_ci

TYPING = Path(__file__).resolve().parents[1] / "typechecks"


def _mypy(path: Path) -> list[tuple[int, str, str]]:
    if shutil.which("mypy") is None:
        if in_ci():
            pytest.fail("mypy is not installed: pip install -e '.[dev]'")
        pytest.skip("mypy not installed")
    from mypy import api

    stdout, _, _ = api.run(["--strict", "--no-incremental", "--show-error-codes",
                            "--no-error-summary", "--python-version", "3.11", str(path)])
    found = []
    for line in stdout.splitlines():
        match = re.match(r".*?:(\d+): error: (.*)  \[([\w-]+)\]$", line)
        if match:
            found.append((int(match.group(1)), match.group(3), match.group(2)))
    return found


def test_task_decorators_carry_parameters_and_return_types() -> None:
    assert _mypy(TYPING / "typed_tasks.py") == []


def test_mypy_rejects_every_deliberate_mistake_and_nothing_else() -> None:
    source = (TYPING / "typed_mistakes.py").read_text().splitlines()
    expected = {(n, m.group(1)) for n, line in enumerate(source, 1)
                if (m := re.search(r"# error: ([\w-]+)$", line))}
    assert len(expected) >= 10
    found = _mypy(TYPING / "typed_mistakes.py")
    assert {(n, code) for n, code, _ in found} == expected, found
