"""``conveyor dashboard`` itself: the command serves the pages, the API, the metrics and the
package's own static files, with its options and environment applied (a real process)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import HERE, REPO
from tests.servers import free_port, terminate, wait_for_port

TOKEN = "t0ken-for-the-command-test"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """``conveyor dashboard -A e2e_tasks:app --read-only`` on a free loopback port, its token
    from the environment; stopped (SIGTERM to its PID) afterwards."""
    port = free_port()
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    env = {**os.environ, "CONVEYOR_BROKER_URL": url, "CONVEYOR_BACKEND_URL": url,
           "CONVEYOR_DASHBOARD_TOKEN": TOKEN,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "dashboard.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "dashboard", "-A",
                             "e2e_tasks:app", "--port", str(port), "--read-only"],
                            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        if not wait_for_port(port, timeout=30):
            raise RuntimeError("conveyor dashboard did not start: "
                               + (tmp_path / "dashboard.log").read_text(errors="replace"))
        yield f"http://127.0.0.1:{port}"
    finally:
        terminate(proc, grace=15)
    assert "conveyor dashboard on http://127.0.0.1:" in (tmp_path / "dashboard.log").read_text()


def test_the_command_serves_the_dashboard_with_its_options(served: str) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=served, timeout=10) as client:
        # The token from CONVEYOR_DASHBOARD_TOKEN is required, even on loopback.
        assert client.get("/api/queues").status_code == 401
        assert client.get("/api/queues", headers={"Authorization": "Bearer wrong"}
                          ).status_code == 401
        page = client.get("/", headers=bearer)
        assert page.status_code == 200 and "Flow" in page.text and "read-only" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/api/flow", headers=bearer).json()["workers"]["alive"] == 0
        assert "conveyor_queue_messages" in client.get("/metrics", headers=bearer).text
        # Assets come from the package itself (no CDN), without credentials.
        script = client.get("/static/dashboard.js")
        assert script.status_code == 200 and "EventSource" in script.text
        assert client.get("/static/dashboard.css").status_code == 200
        for src in ("https://", "http://", "//cdn"):
            assert f'src="{src}' not in page.text and f'href="{src}' not in page.text
        # --read-only: actions refused whatever the token.
        refused = client.post("/api/dead/default/delete", headers=bearer,
                              data={"all": "1"})
        assert refused.status_code == 403
