"""The end-to-end conformance class: an app and real ``conveyor worker`` processes on a driver.

Subclass :class:`EndToEndContract` in a ``Test*`` class and provide ``broker_url`` and
``backend_url`` (or run with ``-p conveyor.testing.plugin --conveyor-broker-url=...
--conveyor-backend-url=...``). The tests send tasks from this process through the app of
:mod:`conveyor.testing.e2e_tasks` and run them in worker subprocesses started with
``python -m conveyor worker -A conveyor.testing.e2e_tasks:app``: delay and get, retries with
their history, the dead-letter queue and replay, chain and group, a worker killed with
SIGKILL mid-task and its task delivered again, SIGTERM draining. Both drivers must be
reachable from other processes (``shared_between_processes=True``); otherwise the tests do
not apply. Each test has a queue of its own (``conformance-<hex>``), purged with its dead
letters afterwards; results expire after :data:`RESULT_EXPIRES` seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from conveyor.backend import ResultBackend
from conveyor.broker import Broker
from conveyor.registry import backend_from_url, broker_from_url
from conveyor.testing.outage import NOT_APPLICABLE

#: Lease of the workers the tests start (seconds): short, so a killed worker's task returns fast.
LEASE = 2.0
#: How long the results of these tests are kept (seconds).
RESULT_EXPIRES = 600.0
#: Longest wait for any one outcome (seconds); generous for loaded machines.
PATIENCE = 45.0


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def outcome(result: Any, workers: Workers) -> Any:
    """``result.get(timeout=PATIENCE)``; on a timeout the test fails showing the workers' logs."""
    from conveyor.exceptions import TimeoutError as ResultTimeout

    try:
        return result.get(timeout=PATIENCE)
    except ResultTimeout as exc:
        pytest.fail(f"{exc}\n--- worker logs (last 3000 characters) ---\n"
                    f"{workers.logs()[-3000:]}", pytrace=False)


class Workers:
    """Starts ``conveyor worker`` processes on the URLs; stops them all at teardown."""

    def __init__(self, broker_url: str, backend_url: str, queue: str, log_dir: Path, *,
                 app: str = "conveyor.testing.e2e_tasks:app", cwd: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        """Workers of ``app`` (an ``-A`` path) on ``queue``, logging to ``log_dir``, started
        in ``cwd`` (``log_dir`` by default) with ``env`` added to their environment."""
        self.broker_url, self.backend_url, self.queue = broker_url, backend_url, queue
        self.log_dir, self.app, self.cwd = log_dir, app, cwd or log_dir
        self.env = dict(env or {})
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, lease: float = LEASE, env: Mapping[str, str] | None = None,
              broker: str | None = None) -> subprocess.Popen[bytes]:
        """Start one worker on the test's queue with ``args`` (e.g. ``"-c", "2"``), a lease
        of ``lease`` seconds, ``env`` added to its environment and, if given, another
        ``broker`` URL."""
        environ = {**os.environ, "CONVEYOR_BROKER_URL": broker or self.broker_url,
                   "CONVEYOR_BACKEND_URL": self.backend_url,
                   "CONVEYOR_BROKER_VISIBILITY_TIMEOUT": str(lease),
                   "CONVEYOR_WORKER_POLL_WAIT": "0.5", **self.env, **(env or {})}
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "-A", self.app,
             "-Q", self.queue, "-l", "INFO", *args],
            cwd=self.cwd, env=environ, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        """Everything the workers printed so far."""
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        """SIGTERM every live worker; SIGKILL those still running after 15 s."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class EndToEndContract:
    """The whole system on the driver(s) under test, with real worker processes."""

    @pytest.fixture
    def broker_url(self, request: pytest.FixtureRequest) -> str:
        """The broker URL. Override it, or give ``--conveyor-broker-url`` with the plugin."""
        try:
            return str(request.getfixturevalue("conveyor_broker_url"))
        except pytest.FixtureLookupError:
            pytest.fail("define a `broker_url` fixture returning the driver's URL, or run "
                        "pytest with `-p conveyor.testing.plugin --conveyor-broker-url=URL`",
                        pytrace=False)

    @pytest.fixture
    def backend_url(self, request: pytest.FixtureRequest) -> str:
        """The backend URL. Override it, or give ``--conveyor-backend-url`` with the plugin."""
        try:
            return str(request.getfixturevalue("conveyor_backend_url"))
        except pytest.FixtureLookupError:
            pytest.fail("define a `backend_url` fixture returning the driver's URL, or run "
                        "pytest with `-p conveyor.testing.plugin --conveyor-backend-url=URL`",
                        pytrace=False)

    @pytest.fixture
    def e2e_queue(self) -> str:
        """A queue of this test's own."""
        return f"conformance-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def app(self, broker_url: str, backend_url: str, e2e_queue: str) -> Iterator[Any]:
        """The producer: :data:`conveyor.testing.e2e_tasks.app` on the URLs and the queue."""
        from conveyor.testing import e2e_tasks

        for make, url in ((broker_from_url, broker_url), (backend_from_url, backend_url)):
            driver: Broker | ResultBackend = make(url)
            shared = driver.capabilities.shared_between_processes
            driver.close()
            if not shared:
                pytest.skip(f"{NOT_APPLICABLE} {type(driver).__name__} is in-process "
                            "(shared_between_processes=False): worker processes cannot use it")
        app = e2e_tasks.app
        conf = app.conf
        saved = {k: conf[k] for k in ("broker_url", "result_backend", "task_default_queue",
                                      "result_expires")}
        app.close()
        conf.update({"broker_url": broker_url, "result_backend": backend_url,
                     "task_default_queue": e2e_queue, "result_expires": RESULT_EXPIRES})
        try:
            yield app
        finally:
            try:
                app.broker.purge(e2e_queue)
                app.broker.delete_dead(e2e_queue)
            finally:
                app.close()
                conf.update(saved)

    @pytest.fixture
    def workers(self, broker_url: str, backend_url: str, e2e_queue: str,
                tmp_path: Path) -> Iterator[Workers]:
        """Starts worker processes; stops them at teardown."""
        logs = tmp_path / "worker-logs"
        logs.mkdir()
        started = Workers(broker_url, backend_url, e2e_queue, logs,
                          env={"CONVEYOR_RESULT_EXPIRES": str(RESULT_EXPIRES)})
        try:
            yield started
        finally:
            started.stop_all()

    def test_delay_and_get(self, app: Any, workers: Workers) -> None:
        from conveyor.testing import e2e_tasks

        workers.start("-c", "2")
        result = e2e_tasks.add.delay(2, 3)
        assert outcome(result, workers) == 5
        assert result.state == "SUCCESS"
        assert result.retries == 0
        [attempt] = result.attempts
        assert attempt["outcome"] == "success" and attempt["worker"]

    def test_retries_keep_their_history_then_the_message_is_dead_lettered_and_replayed(
            self, app: Any, workers: Workers, e2e_queue: str) -> None:
        from conveyor.dlq import replay
        from conveyor.testing import e2e_tasks

        workers.start("-c", "1")
        result = e2e_tasks.always_fails.delay(0.1)
        with pytest.raises(ValueError, match="boom"):
            result.get(timeout=PATIENCE)
        assert result.state == "FAILURE"
        assert result.retries == 2
        assert [a["outcome"] for a in result.attempts] == ["retry", "retry", "failure"]
        assert all(a["error_type"] == "builtins.ValueError" for a in result.attempts)
        wait_until(lambda: len(app.broker.dead_letters(e2e_queue)) == 1, timeout=PATIENCE,
                   what="the exhausted message in the dead-letter queue")
        [letter] = app.broker.dead_letters(e2e_queue)
        assert "max retries exceeded" in letter.reason
        assert replay(app, [letter]).replayed == 1
        wait_until(lambda: len(app.AsyncResult(result.id).attempts) == 6, timeout=PATIENCE,
                   what="three more attempts after the replay")
        wait_until(lambda: len(app.broker.dead_letters(e2e_queue)) == 1, timeout=PATIENCE,
                   what="the replayed message dead-lettered again")

    def test_chain_and_group(self, app: Any, workers: Workers) -> None:
        from conveyor import chain, group
        from conveyor.testing import e2e_tasks

        workers.start("-c", "4")
        flow = chain(e2e_tasks.add.s(1, 2), e2e_tasks.mul.s(10), e2e_tasks.add.s(5))()
        assert outcome(flow, workers) == 35
        fan = group(e2e_tasks.add.s(i, i) for i in range(6))()
        assert outcome(fan, workers) == [2 * i for i in range(6)]

    def test_killed_worker_task_is_redelivered(
            self, app: Any, workers: Workers, tmp_path: Path) -> None:
        from conveyor.testing import e2e_tasks

        marker = tmp_path / "started"
        first = workers.start("-c", "1")
        result = e2e_tasks.nap.delay(2.0, str(marker))
        wait_until(marker.exists, timeout=PATIENCE, what="the task to start")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        marker.unlink()
        workers.start("-c", "1")
        run = outcome(result, workers)
        assert run["pid"] != str(first.pid)
        assert [a["outcome"] for a in result.attempts] == ["lost", "success"]

    def test_sigterm_finishes_the_running_task_and_loses_nothing(
            self, app: Any, workers: Workers, tmp_path: Path) -> None:
        from conveyor.testing import e2e_tasks

        marker = tmp_path / "started"
        proc = workers.start("-c", "1")
        running = e2e_tasks.nap.delay(1.5, str(marker))
        wait_until(marker.exists, timeout=PATIENCE, what="the task to start")
        waiting = [e2e_tasks.add.delay(i, i) for i in range(3)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(PATIENCE) == 0, workers.logs()
        assert running.state == "SUCCESS"
        workers.start("-c", "2")
        assert [outcome(r, workers) for r in waiting] == [0, 2, 4]
