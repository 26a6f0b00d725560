"""Dashboard fixtures: the e2e producer app and real workers (tests/e2e/conftest.py) on the
SQLite default, Redis and PostgreSQL; one Chromium for the session (Debian's package)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import HERE, Pair, Workers, app, queue, workers  # noqa: F401
from tests.servers import free_port, unavailable

pytest.importorskip("starlette", reason="pip install 'conveyor[dashboard]'")

#: The pairs the JSON API is tested on (id -> broker fixture, backend fixture; None: SQLite).
PAIRS: dict[str, tuple[str | None, str | None]] = {
    "sqlite": (None, None),
    "redis": ("redis_url", "redis_url"),
    "postgres": ("postgres_url", "postgres_url"),
}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
#: Set to save page screenshots under docs/dashboard/ (as the README shows them).
SCREENSHOTS = os.environ.get("CONVEYOR_DASHBOARD_SCREENSHOTS") == "1"
DOCS = HERE.parent.parent / "docs" / "dashboard"


@pytest.fixture(params=list(PAIRS), ids=list(PAIRS))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Pair:
    broker_fx, backend_fx = PAIRS[request.param]
    sqlite = f"sqlite:///{tmp_path / 'dash.db'}"
    broker = request.getfixturevalue(broker_fx) if broker_fx else sqlite
    backend = request.getfixturevalue(backend_fx) if backend_fx else sqlite
    if backend.startswith("redis"):  # the dashboard lists tasks with the opt-in index
        backend += ("&" if "?" in backend else "?") + "query_index=1"
    return Pair(request.param, broker, backend)


class Server:
    """A dashboard served by uvicorn in a thread of this process."""

    def __init__(self, asgi: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[test]'")
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
