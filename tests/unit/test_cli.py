"""The command line: tables for people, JSON for scripts, one-line errors with exit codes."""

from __future__ import annotations

import importlib
import json
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor.cli import cli


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module defining an app on memory drivers, importable from the cwd like -A wants."""
    name = f"cliapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        from conveyor import Conveyor
        app = Conveyor("cli", broker="memory://{name}", backend="memory://{name}:pw@x")

        @app.task
        def add(a, b):
            return a + b
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module(name)
    yield name
    sys.modules.pop(name, None)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_queues_lists_counts_as_json(app_module: str) -> None:
    code, _ = run("-A", f"{app_module}:app", "queues", "--json")
    assert code == 0
    mod = sys.modules[app_module]
    mod.add.delay(1, 2)
    mod.add.apply_async((1, 2), countdown=60)
    _, output = run("queues", "-A", f"{app_module}:app", "--json")
    [row] = json.loads(output)
    assert (row["queue"], row["ready"], row["delayed"]) == ("default", 1, 1)


def test_result_shows_state_and_unknown_id_exits_nonzero(app_module: str) -> None:
    mod = sys.modules[app_module]
    sent = mod.add.delay(1, 2)
    code, output = run("result", sent.id, "-A", f"{app_module}:app", "--json")
    assert code == 0
    assert json.loads(output)["state"] == "PENDING"
    code, output = run("result", "no-such-id", "-A", f"{app_module}:app")
    assert code == 1
    assert "no record of task no-such-id" in output


def test_dlq_list_show_replay_and_purge(app_module: str) -> None:
    mod = sys.modules[app_module]
    broker = mod.app.broker
    broker.enqueue("default", b"garbage")
    [res] = broker.reserve(["default"], lease=5)
    broker.dead_letter(res, reason="undecodable message: test")
    code, output = run("dlq", "list", "-A", f"{app_module}:app", "--json")
    [letter] = json.loads(output)
    assert letter["reason"] == "undecodable message: test"
    assert letter["body"] == "garbage"
    code, output = run("dlq", "show", letter["message_id"], "-A", f"{app_module}:app")
    assert code == 0 and "garbage" in output
    code, output = run("dlq", "replay", "-A", f"{app_module}:app")
    assert code == 2 and "--all" in output
    code, output = run("dlq", "replay", "--all", "-A", f"{app_module}:app", "--json")
    assert json.loads(output) == {"replayed": 1, "skipped": []}
    assert broker.stats("default").ready == 1
    [res] = broker.reserve(["default"], lease=5)
    broker.dead_letter(res, reason="again")
    code, output = run("dlq", "purge", "--all", "--yes", "-A", f"{app_module}:app", "--json")
    assert json.loads(output) == {"deleted": 1}


def test_purge_needs_confirmation(app_module: str) -> None:
    sys.modules[app_module].add.delay(1, 1)
    result = CliRunner().invoke(cli, ["purge", "-A", f"{app_module}:app"], input="n\n")
    assert result.exit_code == 1
    code, output = run("purge", "-A", f"{app_module}:app", "--yes", "--json")
    assert code == 0
    assert json.loads(output) == {"default": 1}


def test_check_reports_ok_and_masks_passwords(app_module: str) -> None:
    code, output = run("check", "-A", f"{app_module}:app", "--json")
    report = json.loads(output)
    assert code == 0
    assert report["broker"]["ok"] and report["backend"]["ok"]
    assert ":pw@" not in output


def test_check_fails_in_one_line_for_an_unreachable_backend(app_module: str) -> None:
    code, output = run("--backend", "redis://:topsecret@127.0.0.1:1/0", "check",
                       "-A", f"{app_module}:app")
    assert code == 1
    assert "FAIL backend" in output
    assert "topsecret" not in output


@pytest.mark.parametrize(("args", "message"), [
    (["-A", "does_not_exist:app", "queues"], "cannot import 'does_not_exist'"),
    (["--broker", "nope://x", "queues"], "no broker driver for scheme 'nope://'"),
    (["--broker", "not a url", "queues"], "malformed URL"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(args: list[str], message: str,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = run(*args)
    assert code == 1
    assert message in output
    assert "Traceback" not in output


def test_drivers_lists_builtin_schemes() -> None:
    _, output = run("drivers", "--json")
    schemes = {(r["kind"], r["scheme"]) for r in json.loads(output)}
    assert {("broker", "sqlite"), ("backend", "redis"), ("broker", "memory")} <= schemes


def test_sqlite_file_in_a_missing_directory_is_a_clear_error(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = run("--broker", f"sqlite:///{tmp_path}/missing/dir/q.db", "queues")
    assert code == 1
    assert "missing/dir" in output


def test_check_reports_the_sql_schema_state(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/check.db"
    code, output = run("--broker", url, "--backend", url, "check")
    assert code == 0
    assert len(re.findall(r"schema=v\d+ \(current\)", output)) == 2
