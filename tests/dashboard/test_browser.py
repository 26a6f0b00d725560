"""Real-browser tests: Chromium (Debian's package) driven by Playwright against a dashboard
served by uvicorn, over the SQLite default with a real worker. One server for the module,
one browser for the session. With CONVEYOR_DASHBOARD_SCREENSHOTS=1 each page is saved under
docs/dashboard/ (the README shows them)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.contrib.dashboard import Dashboard
from tests.dashboard.conftest import DOCS, SCREENSHOTS, Server
from tests.e2e.conftest import HERE, Pair, Workers, wait_until

#: The workers keep arguments in the records (the task page shows them).
EXTENDED = {"CONVEYOR_RESULT_EXTENDED": "true"}


class Site:
    """The module's dashboard, its producer app, queue and workers."""

    def __init__(self, app: Any, queue: str, workers: Workers, server: Server,
                 tmp: Path) -> None:
        self.app, self.queue, self.workers, self.server, self.tmp = (
            app, queue, workers, server, tmp)

    def url(self, path: str) -> str:
        return self.server.url + path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    sys.path.insert(0, str(HERE))
    import e2e_tasks

    tmp = tmp_path_factory.mktemp("dash-browser")
    url = f"sqlite:///{tmp / 'dash.db'}"
    queue = f"web-{uuid.uuid4().hex[:8]}"
    conf = e2e_tasks.app.conf
    saved = (conf.broker_url, conf.result_backend, conf.task_default_queue)
    e2e_tasks.app.close()
    conf.update({"broker_url": url, "result_backend": url, "task_default_queue": queue})
    (tmp / "logs").mkdir()
    workers = Workers(Pair("sqlite", url, url), queue, tmp / "logs")
    dash = Dashboard(e2e_tasks.app)
    try:
        with Server(dash.asgi()) as server:
            yield Site(e2e_tasks.app, queue, workers, server, tmp)
    finally:
        workers.stop_all()
        e2e_tasks.app.close()
        conf.broker_url, conf.result_backend, conf.task_default_queue = saved


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    yield tab
    context.close()


def running(site: Site) -> None:
    """Start the module's worker unless an earlier test did: under pytest-xdist the module's
    tests may run on different nodes, each with its own ``site``, so none may rely on
    another having run."""
    if not site.workers.procs:
        site.workers.start("-c", "2", env=EXTENDED)


def shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=name != "tasks")


def _ready(page: Any, queue: str) -> str:
    return str(page.locator(f'[data-queue="{queue}"] [data-k="ready"]').inner_text())


def test_flow_numbers_change_as_a_worker_drains_a_backlog(site: Site, page: Any) -> None:
    import e2e_tasks

    e2e_tasks.nap.map([(0.05,)] * 40)
    e2e_tasks.add.delay(2, 3)
    site.app.flush_pending()
    page.goto(site.url("/"))
    assert page.title().startswith("Flow")
    page.wait_for_function(
        "q => { const el = document.querySelector(`[data-queue='${q}'] [data-k=ready]`);"
        " return el && Number(el.textContent) >= 41; }", arg=site.queue)
    site.workers.start("-c", "2", env=EXTENDED)
    # The same page, not reloaded: server-sent events bring the new numbers.
    page.wait_for_function(
        "q => { const el = document.querySelector(`[data-queue='${q}'] [data-k=ready]`);"
        " return el && Number(el.textContent) === 0; }", arg=site.queue, timeout=60_000)
    page.wait_for_function("() => Number(document.querySelector('[data-workers=alive]')"
                           ".textContent) === 1", timeout=30_000)
    assert _ready(page, site.queue) == "0"
    # The charts refresh from /api/history: the backlog's depth line and the run times.
    page.wait_for_function("() => document.querySelector('#chart-depth polyline') !== null"
                           " && document.querySelector('[data-runtime=p50]').textContent"
                           ".endsWith('ms')", timeout=30_000)
    # And the tasks-per-minute bars, once the worker's heartbeat has published its count.
    page.wait_for_function("() => [...document.querySelectorAll('#chart-done rect')]"
                           ".some(r => Number(r.getAttribute('height')) > 0)", timeout=30_000)
    shot(page, "flow")


def test_each_page_loads(site: Site, page: Any) -> None:
    import e2e_tasks

    e2e_tasks.add.map([(i, i) for i in range(20)])
    site.app.flush_pending()
    running(site)
    for path, title, name in (("/tasks", "Tasks", "tasks"), ("/workers", "Workers", "workers"),
                              ("/dead", "Dead letters", None)):
        page.goto(site.url(path))
        assert page.title().startswith(title)
        assert page.locator("h1").first.inner_text().startswith(title)
        if name:
            shot(page, name)
    page.goto(site.url("/tasks"))
    rows = page.locator("#tasks tbody tr[data-task-id]")
    assert rows.count() >= 20
    first = rows.first.get_attribute("data-task-id")
    page.fill("input[name=id]", str(first)[:8])
    page.click("form.filters button")
    assert page.locator(f'tr[data-task-id="{first}"]').count() == 1


def test_a_tasks_timeline_after_retries_and_replaying_its_dead_letter(
        site: Site, page: Any) -> None:
    import e2e_tasks

    marker = site.tmp / f"flaky-{uuid.uuid4().hex}"
    task_id = e2e_tasks.flaky_until.delay(str(marker), 3).id
    running(site)
    wait_until(lambda: site.app.broker.stats(site.queue).dead == 1, timeout=60,
               what="the flaky task in the dead-letter queue")
    page.goto(site.url(f"/tasks/{task_id}"))
    assert page.locator("#task-state").inner_text() == "FAILURE"
    steps = page.locator("#timeline li")
    assert steps.count() == 3
    assert [steps.nth(i).get_attribute("class") for i in range(3)] == [
        "retry", "retry", "failure"]
    assert "KeyError" in page.locator("#timeline").inner_text()
    assert "from the dead letter" in page.locator("h2:has(+ #args)").inner_text()
    assert str(marker) in page.locator("#args").inner_text()
    shot(page, "task")

    page.goto(site.url("/dead"))
    page.click(f"a[href='/dead?queue={site.queue}']")
    row = page.locator(f"#letters tr:has(a[href='/tasks/{task_id}'])")
    assert row.count() == 1
    shot(page, "dead-letters")
    row.locator("input[name=id]").check()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#replay-selected")
    assert "replayed 1" in page.locator("#done").inner_text()
    wait_until(lambda: (site.app.record(task_id) or object()).__dict__.get("state")
               == "SUCCESS", timeout=60, what="the replayed task to succeed")
    page.goto(site.url(f"/tasks/{task_id}"))
    assert page.locator("#task-state").inner_text() == "SUCCESS"
    assert page.locator("#timeline li").count() == 4
    assert page.locator("#result").inner_text().strip() == "4"


def test_a_dismissed_confirmation_does_nothing(site: Site, page: Any) -> None:
    site.app.broker.enqueue(site.queue, b"junk that is no message")
    running(site)
    wait_until(lambda: site.app.broker.stats(site.queue).dead >= 1, timeout=60,
               what="the junk message dead-lettered")
    page.goto(site.url(f"/dead?queue={site.queue}"))
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#delete-all")
    assert site.app.broker.stats(site.queue).dead >= 1
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-all")
    assert "deleted" in page.locator("#done").inner_text()
    assert site.app.broker.stats(site.queue).dead == 0


def test_a_restarted_dashboard_draws_the_past_hour(site: Site, page: Any) -> None:
    import e2e_tasks

    task_id = e2e_tasks.add.apply_async((20, 22), argsrepr="(<secret>, 22)").id
    running(site)
    wait_until(lambda: (site.app.record(task_id) or object()).__dict__.get("state")
               == "SUCCESS", timeout=60, what="the task to succeed")
    # A second dashboard over the same backend, as after a restart: its charts come from
    # the records, before it has sampled anything of its own.
    with Server(Dashboard(site.app, sample=False).asgi()) as restarted:
        page.goto(restarted.url + "/")
        page.wait_for_function("() => [...document.querySelectorAll('#chart-done rect')]"
                               ".some(r => Number(r.getAttribute('height')) > 0)")
        assert page.locator("#chart-wait polyline").count() >= 1
        assert page.locator("#chart-runtime polyline").count() >= 1
        assert page.locator("[data-wait=p50]").inner_text().endswith("ms")
        page.goto(restarted.url + f"/tasks/{task_id}")
        assert page.locator("#args").inner_text().startswith("args = (<secret>, 22)")
        assert "from the record" in page.locator("h2:has(+ #args)").inner_text()
        assert page.locator("#task-wait").inner_text().endswith("(due → last start)")


def test_the_charts_show_one_queue_when_chosen(site: Site, page: Any) -> None:
    import e2e_tasks

    other = site.queue + "-other"
    done = e2e_tasks.add.apply_async((1, 2)).id
    idle = e2e_tasks.add.apply_async((3, 4), queue=other).id  # nobody consumes it
    running(site)
    wait_until(lambda: (site.app.record(done) or object()).__dict__.get("state")
               == "SUCCESS", timeout=60, what="the task to succeed")
    assert site.app.record(idle).state == "PENDING"  # type: ignore[union-attr]
    page.goto(site.url("/"))
    page.wait_for_function("() => [...document.querySelectorAll('#chart-done rect')]"
                           ".some(r => Number(r.getAttribute('height')) > 0)")
    # Choosing a queue reloads the page with its charts (no button press needed).
    with page.expect_navigation():
        page.select_option("#chart-queue", other)
    assert f"queue={other}" in page.url
    assert page.locator("#chart-queue").input_value() == other
    # Nothing of that queue has run: no bars; its depth line is the only one.
    page.wait_for_function("() => document.querySelector('#legend-depth').textContent !== ''")
    assert page.locator("#legend-depth").inner_text().strip() == other
    assert not [h for h in page.eval_on_selector_all(
        "#chart-done rect", "els => els.map(e => Number(e.getAttribute('height')))") if h > 0]
    with page.expect_navigation():
        page.select_option("#chart-queue", site.queue)
    page.wait_for_function("() => [...document.querySelectorAll('#chart-done rect')]"
                           ".some(r => Number(r.getAttribute('height')) > 0)")
