"""The command line as a user porting from Celery meets it: options anywhere, Celery's -A
forms, one-line errors (JSON under --json), whole ids, ISO times, driver and worker errors,
progress, and hostile strings printed escaped. Through click's runner and real processes."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conveyor.cli import cli, output
from conveyor.message import Message
from tests.hostile import IDS, TEXTS

REPO = Path(__file__).resolve().parents[2]
#: Raw characters that must never reach a terminal from data (line breaks aside).
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200b]")


@pytest.fixture(autouse=True)
def wide_console() -> Iterator[None]:
    """Wide consoles, so a table never wraps a value and output can be searched for it."""
    saved = output.out.width, output.err.width
    output.out.width = output.err.width = 2000
    yield
    output.out.width, output.err.width = saved


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"portapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        from conveyor import Conveyor
        app = Conveyor("port", broker="memory://{name}", backend="memory://{name}")

        @app.task
        def add(a, b):
            return a + b
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module(name)
    yield name
    sys.modules.pop(name, None)


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False, input=input)
    return result.exit_code, result.output


def dead_letter(app: Any, *, task_id: str, task: str, reason: str, args: Any = ()) -> None:
    """Put a message straight on the broker (no send-time checks) and dead-letter it."""
    body = Message(id=task_id, task=task, args=list(args)).encode(app.signer)
    app.broker.enqueue("default", body)
    [res] = app.broker.reserve(["default"], lease=5)
    app.broker.dead_letter(res, reason=reason)


# -- options anywhere, Celery's -A forms ----------------------------------------------------
def test_broker_backend_and_app_are_accepted_after_the_subcommand(app_module: str) -> None:
    url = f"memory://{app_module}-other"
    code, out = run("check", "-A", app_module, "--broker", url, "--backend", url, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["broker"]["url"] == url
    assert report["config"]["broker_url"]["source"] == "command line (--broker)"
    code, out = run("--broker", url, "check", "-A", app_module, "--json")
    assert json.loads(out)["broker"]["url"] == url


@pytest.mark.parametrize("form", ["{m}", "{m}:app", "{m}.app", "{m}:celery", "{m}.celery",
                                  "pkg_{m}.shop", "pkg_{m}.shop:celery", "pkg_{m}.shop.celery"])
def test_app_path_takes_every_celery_form(form: str, app_module: str, tmp_path: Path) -> None:
    (tmp_path / f"pkg_{app_module}").mkdir()
    (tmp_path / f"pkg_{app_module}" / "__init__.py").write_text("")
    (tmp_path / f"pkg_{app_module}" / "shop.py").write_text(
        "from conveyor import Conveyor\n"
        f"celery = Conveyor('shop', broker='memory://{app_module}-shop', "
        f"backend='memory://{app_module}-shop')\n")
    (tmp_path / f"{app_module}.py").write_text(
        (tmp_path / f"{app_module}.py").read_text() + "\ncelery = app\n")
    sys.modules.pop(app_module, None)
    code, out = run("check", "-A", form.format(m=app_module), "--json")
    assert code == 0, out
    assert json.loads(out)["broker"]["url"].startswith(f"memory://{app_module}")


def test_a_package_with_the_app_in_its_celery_module_is_found(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    name = f"proj_{uuid.uuid4().hex[:6]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "celery.py").write_text(
        f"from conveyor import Conveyor\nmine = Conveyor('p', broker='memory://{name}')\n")
    monkeypatch.chdir(tmp_path)
    code, out = run("check", "-A", name, "--json")
    assert code == 0, out
    assert json.loads(out)["broker"]["url"] == f"memory://{name}"


def test_an_unexpected_error_is_one_line_and_debug_shows_it(app_module: str,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    broker = sys.modules[app_module].app.broker

    def broken(queue: str) -> None:
        raise RuntimeError("driver bug")

    monkeypatch.setattr(broker, "stats", broken)
    code, out = run("queues", "-A", app_module)
    assert code == 1
    assert out.strip() == ("error: unexpected RuntimeError: driver bug (--debug shows the "
                           "traceback)")
    with pytest.raises(RuntimeError, match="driver bug"):
        run("queues", "-A", app_module, "--debug")


def test_a_file_path_given_to_app_says_to_use_the_module_name(app_module: str) -> None:
    code, out = run("queues", "-A", "proj/shop.py")
    assert code == 1
    assert "-A takes a module name, not a file path: -A proj.shop" in out
    code, out = run("queues", "-A", f"{app_module}.py")
    assert code == 1 and f"-A {app_module} (run from" in out


def test_a_module_with_two_apps_and_no_app_attribute_names_them(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    name = f"twoapps_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(
        "from conveyor import Conveyor\na = Conveyor('a', broker='memory://')\n"
        "b = Conveyor('b', broker='memory://')\n")
    monkeypatch.chdir(tmp_path)
    code, out = run("queues", "-A", name)
    assert code == 1
    assert f"holds 2 Conveyor apps (a, b): use -A {name}:NAME" in out


@pytest.mark.parametrize(("source", "expected"), [
    ("from conveyor import Conveyor\napp = Conveyor('x'\n", "SyntaxError: '(' was never closed"),
    ("import conveyor\n\n\nraise RuntimeError('no settings [/x]')\n",
     "RuntimeError: no settings [/x]"),
    ("import not_a_module_anywhere_xyz\n",
     "ModuleNotFoundError: No module named 'not_a_module_anywhere_xyz'"),
])
def test_an_exception_in_the_app_module_is_one_line_naming_file_and_line(
        source: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"broken_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    code, out = run("queues", "-A", name)
    assert code == 1
    line = source.count("\n") if "raise" in source else (2 if "(" in source else 1)
    assert out.strip().splitlines() == [
        f"error: error in module {name!r} at {name}.py, line {line} (from -A {name}): "
        f"{expected} (--debug shows the traceback)"]
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "conveyor", "queues", "-A",
                                             name, "--debug"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr


# -- JSON everywhere -------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["result", "no-such-id", "--json"],
    ["--json", "result", "no-such-id"],
    ["dlq", "show", "no-such-id", "--json"],
    ["dlq", "show", "--json"],                              # a usage error
    ["--broker", "nope://x", "queues", "--json"],
    ["queues", "--json", "-A", "does_not_exist_mod"],
])
def test_json_makes_errors_json_with_a_nonzero_exit(args: list[str], app_module: str) -> None:
    if "-A" not in args:
        args = [*args, "-A", app_module]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code != 0
    assert set(json.loads(result.stdout)) == {"error"}


# -- ids, counts and times -------------------------------------------------------------------
def test_dlq_list_shows_whole_ids_that_every_dlq_command_takes_whole_or_by_prefix(
        app_module: str) -> None:
    app = sys.modules[app_module].app
    ids = [f"order-{uuid.uuid4()}-{n}" for n in range(3)]
    for i in ids:
        dead_letter(app, task_id=i, task="shop.charge", reason="test")
    output.out.width = 80      # a narrow terminal still shows every id whole
    code, out = run("dlq", "list", "-A", app_module)
    assert code == 0
    assert all(i in out for i in ids)
    code, out = run("dlq", "show", ids[0][:30], "-A", app_module, "--json")
    assert json.loads(out)["task_id"] == ids[0]
    code, out = run("dlq", "show", "order-", "-A", app_module)
    assert code == 1 and "matches several dead letters" in out
    code, out = run("dlq", "replay", ids[1][:30], "-A", app_module, "--json")
    assert json.loads(out) == {"replayed": 1, "skipped": []}
    code, out = run("dlq", "purge", ids[2][:30], "--yes", "-A", app_module, "--json")
    assert json.loads(out) == {"deleted": 1}


def test_dlq_list_says_when_it_shows_only_part(app_module: str) -> None:
    app = sys.modules[app_module].app
    for n in range(5):
        dead_letter(app, task_id=f"t{n}", task="x", reason="r")
    result = CliRunner().invoke(cli, ["dlq", "list", "--limit", "3", "-A", app_module])
    assert "showing 3 of 5 (use --limit)" in result.stderr
    result = CliRunner().invoke(cli, ["dlq", "list", "--limit", "5", "-A", app_module])
    assert "showing" not in result.output


def test_times_are_iso_8601_with_zone_and_json_keeps_numbers(app_module: str) -> None:
    app = sys.modules[app_module].app
    dead_letter(app, task_id="timed", task="x", reason="r")
    _, out = run("dlq", "show", "timed", "-A", app_module)
    assert re.search(r"dead_at\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", out), out
    _, out = run("dlq", "show", "timed", "-A", app_module, "--json")
    assert abs(json.loads(out)["dead_at"] - time.time()) < 60


def test_check_prints_each_url_once_and_where_each_value_came_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVEYOR_RESULT_EXPIRES", "50")
    url = f"sqlite:///{tmp_path}/c.db"
    code, out = run("--broker", url, "--backend", url, "check")
    assert code == 0, out
    assert out.count(url) == 1
    assert "(the broker's URL), from command line (--backend)" in out
    assert re.search(r"result_expires\s*│\s*50\.0\s*│\s*environment \(CONVEYOR_RESULT_EXPIRES\)",
                     out), out


# -- drivers and worker start-up -------------------------------------------------------------
def test_drivers_imports_each_client_and_names_the_extra_when_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)      # import redis now raises ImportError
    _, out = run("drivers", "--json")
    rows = {(r["kind"], r["scheme"]): r["status"] for r in json.loads(out)}
    assert rows[("broker", "redis")].startswith("needs pip install 'conveyor[redis]'")
    assert rows[("broker", "sqlite")] == "ok"
    _, out = run("drivers")
    assert "needs pip install 'conveyor[redis]'" in out


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_worker_with_a_missing_driver_library_says_so_once_and_exits_at_once(
        pool: str, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['redis'] = None\n"
            "from conveyor.cli import main\n"
            "sys.argv = ['conveyor', 'worker', '--broker', 'redis://127.0.0.1:1/0',"
            f" '--backend', 'redis://127.0.0.1:1/0', '--pool', '{pool}', '-c', '2']\nmain()\n")
    started = time.monotonic()
    proc = subprocess.run(check=False, args=[sys.executable, "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert time.monotonic() - started < 30
    assert proc.returncode == 1
    assert proc.stderr.count("pip install 'conveyor[redis]'") == 1, proc.stderr
    assert "will retry" not in proc.stderr


def test_worker_logs_a_drain_summary_and_hostile_task_names_escaped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    (tmp_path / "wapp.py").write_text(textwrap.dedent("""
        from conveyor import Conveyor
        app = Conveyor("w")

        @app.task
        def ok():
            return 1

        @app.task(bind=True, max_retries=1)
        def flaky(self):
            if self.request.retries == 0:
                raise self.retry(countdown=0)
            return 2

        @app.task(max_retries=0)
        def bad():
            raise ValueError("no")
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), "CONVEYOR_BROKER_URL": url,
           "CONVEYOR_BACKEND_URL": url, "CONVEYOR_WORKER_POLL_WAIT": "0.2"}
    send = textwrap.dedent(f"""
        import time
        import wapp
        rs = [wapp.ok.delay() for _ in range(3)] + [wapp.flaky.delay()]
        print([r.get(timeout=60) for r in rs])
        wapp.bad.delay().get(timeout=60, propagate=False)
        wapp.app.send_task({TEXTS[3]!r})
        deadline = time.monotonic() + 60
        while wapp.app.broker.stats("default").dead < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    """)
    worker = subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "-A", "wapp",
                               "-P", "solo", "-c", "4"], cwd=tmp_path, env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        sent = subprocess.run(check=False, args=[sys.executable, "-c", send], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert sent.stdout.strip() == "[1, 1, 1, 2]", sent.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        _, logs = worker.communicate(timeout=60)
    summary = re.search(r"worker stopped: (\d+) messages processed \(1 failed, 1 retried\) "
                        r"in [\d.]+ s, [\d.]+/s", logs)
    assert summary is not None, logs
    assert int(summary.group(1)) >= 6
    assert "concurrency=1" in logs          # Celery's -P solo: one thread
    assert output.visible(TEXTS[3]) in logs
    assert not RAW_CONTROLS.search(logs), logs


def test_dlq_replay_all_and_bulk_call_show_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    fill = (f"from conveyor import Conveyor\nfrom conveyor.message import Message\n"
            f"app = Conveyor('p', broker={url!r}, backend={url!r})\n"
            "for n in range(60):\n"
            "    app.broker.enqueue('default', Message(id=f'p{n}', task='x').encode(app.signer))\n"
            "for r in app.broker.reserve(['default'], lease=30, limit=60):\n"
            "    app.broker.dead_letter(r, reason='r')\n")
    subprocess.run(args=[sys.executable, "-c", fill], cwd=tmp_path, check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "conveyor", "--broker", url,
                                             "--backend", url, "dlq", "replay", "--all"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), "FORCE_COLOR": "1",
                               "TTY_INTERACTIVE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "replayed 60 dead letters" in proc.stdout
    assert "replaying" in proc.stderr
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "conveyor", "--broker", url,
                                             "--backend", url, "call", "x", "-n", "200"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), "FORCE_COLOR": "1",
                               "TTY_INTERACTIVE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "sent 200 messages of x" in proc.stdout
    assert "sending" in proc.stderr


# -- hostile strings -------------------------------------------------------------------------
def _assert_safe(out: str, *expected: str) -> None:
    assert not RAW_CONTROLS.search(out), repr(out[:400])
    for text in expected:
        # Long values may wrap; their start is enough to show they were printed literally.
        assert output.visible(text).strip()[:200] in out, (text, out[:2000])


def test_every_command_prints_hostile_ids_names_and_reasons_escaped(app_module: str) -> None:
    app = sys.modules[app_module].app
    letters = list(zip(IDS[:12], TEXTS * 2, reversed(TEXTS * 2), strict=False))
    for task_id, task, reason in letters:
        dead_letter(app, task_id=task_id, task=task, reason=reason, args=[reason])
    code, out = run("dlq", "list", "--limit", "1000", "-A", app_module)
    assert code == 0, out
    _assert_safe(out, *(i for i, _, _ in letters), *(t for _, t, r in letters),
                 *(r for _, _, r in letters))
    for task_id, task, reason in letters:
        code, out = run("dlq", "show", task_id, "-A", app_module)
        assert code == 0, (task_id, out)
        _assert_safe(out, task_id, task, reason)
        code, out = run("dlq", "show", task_id, "-A", app_module, "--json")
        assert json.loads(out)["task_id"] == task_id
    for task_id, task, _ in letters:
        code, out = run("result", task_id, "-A", app_module)
        assert code == 1
        _assert_safe(out, task_id)
        app.backend.store(
            __import__("conveyor.record", fromlist=["TaskRecord"]).TaskRecord(
                task_id, "FAILURE", task=task, error_type="ValueError",
                error_message=TEXTS[0], traceback=f"Traceback\n  {TEXTS[3]}\n").to_stored(),
            ttl=None)
        code, out = run("result", task_id, "-A", app_module)
        assert code == 0, out
        _assert_safe(out, task_id, task, TEXTS[3])
    code, out = run("dlq", "replay", *(i for i, _, _ in letters), "-A", app_module)
    assert code == 0, out
    for text in TEXTS[:4]:
        code, out = run("queues", "-Q", text, "-A", app_module)
        _assert_safe(out)
        code, out = run("purge", "-Q", text, "--yes", "-A", app_module)
        _assert_safe(out)
        code, out = run("check", "-A", app_module, "--json")
        assert code == 0


def test_hostile_strings_reach_a_real_terminal_escaped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/h.db"
    fill = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
            "from conveyor import Conveyor\nfrom conveyor.message import Message\n"
            "from tests.hostile import IDS, TEXTS\n"
            f"app = Conveyor('h', broker={url!r}, backend={url!r})\n"
            "for i, t in zip(IDS[:10], TEXTS):\n"
            "    app.broker.enqueue('default', Message(id=i, task=t).encode(app.signer))\n"
            "for r, t in zip(app.broker.reserve(['default'], lease=30, limit=10), TEXTS):\n"
            "    app.broker.dead_letter(r, reason=t)\n")
    subprocess.run(args=[sys.executable, "-c", fill], cwd=tmp_path, check=True, timeout=60)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "3000"}
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "conveyor", "dlq", "list",
                                             "--broker", url, "--backend", url],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    _assert_safe(proc.stdout, *IDS[:10], *TEXTS[:10])


def test_dlq_replay_says_what_it_skipped_and_why(app_module: str) -> None:
    from conveyor import Conveyor

    app = sys.modules[app_module].app
    signed = Conveyor("signer", broker="memory://unused-signer", backend="memory://unused",
                      task_signing_key="k" * 32)
    app.broker.enqueue("default", Message(id="signed-one", task="x").encode(signed.signer))
    [res] = app.broker.reserve(["default"], lease=5)
    app.broker.dead_letter(res, reason="test")
    dead_letter(app, task_id="plain-one", task="x", reason="test")
    code, out = run("dlq", "replay", "--all", "-A", app_module)
    assert code == 0, out
    assert "replayed 1 dead letters, skipped 1 (left in the dead-letter queue)" in out
    assert re.search(r"signed-one\s*│\s*its signature cannot be verified", out), out
    code, out = run("dlq", "replay", "--all", "-A", app_module, "--json")
    report = json.loads(out)
    assert report["replayed"] == 0
    assert [s["reason"][:32] for s in report["skipped"]] == ["its signature cannot be verified"]


def test_call_sends_a_task_by_name_once_or_in_bulk(app_module: str) -> None:
    app = sys.modules[app_module].app
    code, out = run("call", f"{app_module}.add", "--args", "[2, 3]", "--kwargs", "{}",
                    "-A", app_module)
    assert code == 0, out
    [res] = app.broker.reserve(["default"], lease=5)
    msg = Message.decode(res.body, app.signer)
    assert (msg.id, msg.task, list(msg.args)) == (out.strip(), f"{app_module}.add", [2, 3])
    code, out = run("call", "x.y", "-n", "120", "-Q", "bulk", "-A", app_module, "--json")
    assert code == 0, out
    assert json.loads(out)["sent"] == 120
    assert app.broker.stats("bulk").ready == 120
    code, out = run("call", "x.y", "--args", "{", "-A", app_module, "--json")
    assert code == 2
    assert json.loads(out)["error"].startswith("--args is not JSON")
    code, out = run("call", "x.y", "--kwargs", "[1]", "-A", app_module)
    assert code == 2 and "--kwargs must be a JSON object, not list" in out
    code, out = run("call", "x.y", "--eta", "tomorrow", "-A", app_module)
    assert code == 1 and "eta='tomorrow' is not an ISO 8601 date and time" in out


def test_json_never_prompts_it_asks_for_yes(app_module: str) -> None:
    for args in (["purge"], ["dlq", "purge", "--all"]):
        result = CliRunner().invoke(cli, [*args, "-A", app_module, "--json"], input="y\n")
        assert result.exit_code == 2
        assert json.loads(result.stdout) == {
            "error": "--json cannot ask for confirmation: add --yes"}


def test_missing_extra_hint_keeps_its_brackets(app_module: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    code, out = run("queues", "-A", app_module, "--broker", "redis://127.0.0.1:1/0")
    assert code == 1
    assert "pip install 'conveyor[redis]'" in out


def test_more_commands_print_hostile_names_escaped(app_module: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    app = sys.modules[app_module].app
    for text in TEXTS[:6]:
        code, out = run("call", text, "--args", json.dumps([text]), "-Q", "hostile",
                        "-A", app_module)
        assert code == 0, out
        _assert_safe(out)
    code, out = run("call", TEXTS[0], "-n", "3", "-A", app_module)
    _assert_safe(out, TEXTS[0])
    for text in TEXTS[:4]:
        monkeypatch.setenv("CONVEYOR_TASK_DEFAULT_QUEUE", text)
        sys.modules.pop(app_module, None)
        code, out = run("check", "-A", app_module)
        assert code == 0, out
        _assert_safe(out, text)
    for args in (["cleanup"], ["drivers"], ["inspect", "workers"], ["inspect", "active"]):
        code, out = run(*args, "-A", app_module)
        assert code == 0, (args, out)
        _assert_safe(out)
    assert app.broker.stats("hostile").ready == 6


def test_the_same_through_a_real_process(tmp_path: Path) -> None:
    """Options after the subcommand, a Celery -A form, the environment's layer, JSON errors,
    whole ids: through ``python -m conveyor`` as a user types it."""
    url = f"sqlite:///{tmp_path}/r.db"
    (tmp_path / "realapp.py").write_text(
        "from conveyor import Conveyor\n"
        "celery = Conveyor('real', broker='memory://unused', backend='memory://unused')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CONVEYOR_RESULT_EXPIRES": "42"}

    def conveyor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "conveyor", *args], check=False,
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)

    proc = conveyor("check", "-A", "realapp.celery", "--broker", url, "--backend", url,
                    "--json")
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)["config"]
    assert config["broker_url"] == {"value": url, "source": "command line (--broker)"}
    assert config["result_expires"] == {"value": 42.0,
                                        "source": "environment (CONVEYOR_RESULT_EXPIRES)"}
    task_id = f"order-{uuid.uuid4()}-whole"
    proc = conveyor("call", "x.y", "--broker", url, "--backend", url, "-A", "realapp")
    sent = proc.stdout.strip()
    assert proc.returncode == 0 and len(sent) == 36, proc.stderr
    proc = conveyor("result", sent, "-A", "realapp", "--broker", url, "--backend", url)
    assert proc.returncode == 0 and sent in proc.stdout, proc.stderr
    proc = conveyor("result", task_id, "--json", "-A", "realapp", "--broker", url,
                    "--backend", url)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"].startswith(f"no record of task {task_id}")
