"""The ASGI app: server-rendered pages, the JSON API they use, server-sent events, metrics.

Pages: ``/`` (flow; ``?queue=`` charts one queue), ``/tasks``, ``/tasks/{id}``,
``/workers``, ``/dead``. API (JSON, read): ``/api/flow``, ``/api/history`` (``?queue=``: one
queue's hour), ``/api/queues``, ``/api/tasks``, ``/api/tasks/{id}``, ``/api/groups/{id}``
(a chord's header or a saved group), ``/api/workers``,
``/api/dead/{queue}``, ``/api/events`` (server-sent events: a flow snapshot every two
seconds). API (POST, CSRF token in the ``csrf`` form field or ``X-CSRF-Token`` header;
refused with ``--read-only``): ``/api/revoke/{id}``, ``/api/retry/{id}``,
``/api/dead/{queue}/replay`` and ``/api/dead/{queue}/delete`` (form fields ``id``, repeated,
or ``all=1``). ``/metrics``: Prometheus text format. See docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conveyor.contrib.dashboard.data import STATES, Reader, Redactor
from conveyor.contrib.dashboard.metrics import render_metrics
from conveyor.contrib.dashboard.security import COOKIE, Guard, is_loopback
from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

# Resolved: an editable install links the files, and StaticFiles serves no symlinks.
_HERE = Path(__file__).resolve().parent
_PAGE_SIZES = (20, 50, 100, 200)


def _when(value: Any) -> str:
    """Epoch seconds as ISO 8601 UTC (to the millisecond); '' for nothing."""
    if not isinstance(value, (int, float)):
        return ""
    return datetime.fromtimestamp(float(value), tz=timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: str | None) -> float | None:
    """Epoch seconds or an ISO 8601 time (naive means UTC); None for nothing."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConveyorError(f"invalid time {value[:40]!r}: use ISO 8601 "
                            "(2026-12-04T18:00) or epoch seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


#: What an action's redirect may ask a page to show (``?done=``): only these, so a link from
#: elsewhere cannot put its own words on the dashboard's pages.
_NOTICE = re.compile(r"revoked|retried: \d+|replayed \d+, skipped \d+|deleted \d+")


def _notice(value: str | None) -> str | None:
    """``value`` if it is one of the dashboard's own action messages, else None."""
    return value if value is not None and _NOTICE.fullmatch(value) else None


def _to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=repr, ensure_ascii=False)


class Dashboard:
    """The dashboard of one app: holds the reader, the guard and the templates."""

    def __init__(self, app: Conveyor, *, read_only: bool = False, guard: Guard | None = None,
                 redact: Redactor | None = None, sample: bool = True) -> None:
        self.app = app
        self.read_only = read_only
        self.guard = guard or Guard()
        self.reader = Reader(app, redact=redact)
        self.sample = sample
        self.env = Environment(loader=FileSystemLoader(_HERE / "templates"),
                               autoescape=select_autoescape(default=True,
                                                            default_for_string=True))
        self.env.filters["when"] = _when
        self.env.filters["tojson_pretty"] = _to_json

    # -- plumbing ---------------------------------------------------------------------------
    def render(self, request: Request, name: str, status: int = 200,
               **context: Any) -> HTMLResponse:
        template = self.env.get_template(name)
        html = template.render(
            request=request, read_only=self.read_only, csrf=self.guard.csrf(),
            broker=self.app.broker.url.masked, backend=self.app.backend.url.masked,
            app_name=self.app.main, can_query=self.reader.can_query,
            has_registry=self.reader.has_registry, **context)
        return HTMLResponse(html, status_code=status)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking driver call off the event loop."""
        return await run_in_threadpool(fn, *args, **kwargs)

    async def action_allowed(self, request: Request) -> tuple[bool, dict[str, Any]]:
        """Whether a POST may act: not read-only, a valid CSRF token, not cross-site."""
        form = dict(await request.form()) if request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")) else {}
        if self.read_only:
            return False, form
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False, form
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return False, form
        token = request.headers.get("x-csrf-token") or form.get("csrf")
        return self.guard.check_csrf(str(token) if token is not None else None), form

    # -- pages ------------------------------------------------------------------------------
    async def flow_page(self, request: Request) -> Response:
        flow = await self.call(self.reader.flow)
        queue = request.query_params.get("queue") or None
        history = await self.call(self.reader.history, queue)
        # The queues known now (the latest sample may be two seconds old).
        names = await self.call(self.reader.queue_names)
        return self.render(request, "flow.html", page="flow", flow=flow, history=history,
                           states=STATES, chart_queue=queue, queue_names=names)

    def _filters(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        filters = {k: (q.get(k) or None) for k in ("state", "name", "queue", "worker")}
        search = (q.get("id") or "").strip() or None
        limit = int(q.get("limit") or 50) if (q.get("limit") or "50").isdigit() else 50
        return {**filters, "id_prefix": search, "since": _parse_time(q.get("since")),
                "until": _parse_time(q.get("until")), "cursor": q.get("cursor") or None,
                "limit": max(1, min(limit, 500))}

    async def tasks_page(self, request: Request) -> Response:
        if not self.reader.can_query:
            return self.render(request, "tasks.html", page="tasks", tasks=[], cursor=None,
                               filters={}, states=STATES, next_url=None, error=None,
                               sizes=_PAGE_SIZES)
        try:
            filters = self._filters(request)
        except ConveyorError as exc:
            return self.render(request, "tasks.html", status=400, page="tasks", tasks=[],
                               cursor=None, filters={}, states=STATES, next_url=None,
                               error=str(exc), sizes=_PAGE_SIZES)
        if filters["id_prefix"] and not filters["cursor"]:
            exact = await self.call(self.app.backend.get, filters["id_prefix"])
            if exact is not None:
                return RedirectResponse(request.url_for("task_page",
                                                        task_id=filters["id_prefix"]), 303)
        try:
            page = await self.call(self.reader.tasks, **filters)
        except ConveyorError as exc:
            return self.render(request, "tasks.html", status=400, page="tasks", tasks=[],
                               cursor=None, filters=filters, states=STATES, next_url=None,
                               error=str(exc), sizes=_PAGE_SIZES)
        next_url = None
        if page["cursor"]:
            params = {k: v for k, v in request.query_params.items() if k != "cursor"}
            next_url = "/tasks?" + urlencode({**params, "cursor": page["cursor"]})
        return self.render(request, "tasks.html", page="tasks", tasks=page["tasks"],
                           cursor=page["cursor"], filters=filters, states=STATES,
                           next_url=next_url, error=None, sizes=_PAGE_SIZES)

    async def task_page(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        task = await self.call(self.reader.task, task_id)
        if task is None:
            # A group's id (the task page links a member's group): a chord's header or a
            # saved group has a page of its own.
            group = await self.call(self.reader.group, task_id)
            if group is not None:
                return self.render(request, "group.html", page="tasks", group=group)
            return self.render(request, "task.html", status=404, page="tasks", task=None,
                               task_id=task_id)
        return self.render(request, "task.html", page="tasks", task=task, task_id=task_id,
                           notice=_notice(request.query_params.get("done")))

    async def workers_page(self, request: Request) -> Response:
        workers = await self.call(self.reader.workers)
        return self.render(request, "workers.html", page="workers", workers=workers,
                           now=time.time())

    async def dead_page(self, request: Request) -> Response:
        queues = await self.call(self.reader.queues)
        chosen = request.query_params.get("queue")
        letters = []
        if chosen:
            letters = await self.call(self.reader.dead_letters, chosen, limit=200)
        message = _notice(request.query_params.get("done"))
        return self.render(request, "dead.html", page="dead", queues=queues, chosen=chosen,
                           letters=letters, message=message)

    # -- JSON API ---------------------------------------------------------------------------
    async def api_flow(self, request: Request) -> Response:
        return JSONResponse(await self.call(self.reader.flow))

    async def api_history(self, request: Request) -> Response:
        queue = request.query_params.get("queue") or None
        return JSONResponse(await self.call(self.reader.history, queue))

    async def api_queues(self, request: Request) -> Response:
        return JSONResponse(await self.call(self.reader.queues))

    async def api_tasks(self, request: Request) -> Response:
        if not self.reader.can_query:
            return JSONResponse({"error": "this result backend cannot list tasks "
                                          "(capabilities.query is False)"}, 501)
        try:
            filters = self._filters(request)
            return JSONResponse(await self.call(self.reader.tasks, **filters))
        except ConveyorError as exc:
            return JSONResponse({"error": str(exc)}, 400)

    async def api_task(self, request: Request) -> Response:
        task = await self.call(self.reader.task, request.path_params["task_id"])
        if task is None:
            return JSONResponse({"error": "no such task"}, 404)
        return JSONResponse(json.loads(json.dumps(task, default=repr)))

    async def api_group(self, request: Request) -> Response:
        group = await self.call(self.reader.group, request.path_params["group_id"])
        if group is None:
            return JSONResponse({"error": "no such group (only a chord's header or a group "
                                          "saved with GroupResult.save() is known)"}, 404)
        return JSONResponse(group)

    async def api_workers(self, request: Request) -> Response:
        return JSONResponse(await self.call(self.reader.workers))

    async def api_dead(self, request: Request) -> Response:
        rows = await self.call(self.reader.dead_letters, request.path_params["queue"],
                               limit=int(request.query_params.get("limit") or 100))
        return JSONResponse(json.loads(json.dumps(rows, default=repr)))

    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            while True:
                flow = await self.call(self.reader.flow)
                yield f"event: flow\ndata: {json.dumps(flow)}\n\n".encode()
                for _ in range(10):
                    if await request.is_disconnected():
                        return
                    await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        body, content_type = await self.call(render_metrics, self.reader)
        return Response(body, media_type=content_type)

    # -- actions ----------------------------------------------------------------------------
    def _answer(self, request: Request, result: dict[str, Any], back: str,
                status: int = 200) -> Response:
        """JSON for API clients, a redirect back for forms."""
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(back + ("&" if "?" in back else "?")
                                    + urlencode({"done": result.get("message", "")}), 303)
        return JSONResponse(result, status)

    async def revoke(self, request: Request) -> Response:
        ok, _ = await self.action_allowed(request)
        if not ok:
            return JSONResponse({"error": "action refused (read-only, or no valid CSRF "
                                          "token)"}, 403)
        task_id = request.path_params["task_id"]
        await self.call(self.app.control.revoke, task_id)
        return self._answer(request, {"revoked": task_id, "message": "revoked"},
                            f"/tasks/{_quote(task_id)}")

    async def retry(self, request: Request) -> Response:
        ok, _ = await self.action_allowed(request)
        if not ok:
            return JSONResponse({"error": "action refused (read-only, or no valid CSRF "
                                          "token)"}, 403)
        task_id = request.path_params["task_id"]
        record = await self.call(self.app.record, task_id)
        if record is None:
            return JSONResponse({"error": "no such task"}, 404)
        letter = await self.call(self.reader.dead_letter_of, task_id, record.queue)
        if letter is not None:
            # The dead letter is the whole message (a workflow's next steps too): replay it.
            report = await self.call(self._replay, letter["queue"], [letter["message_id"]])
            return self._answer(request, {**report, "from": "dead letter",
                                          "message": f"retried: {report['replayed']}"},
                                f"/tasks/{_quote(task_id)}")
        try:
            await self.call(self.reader.resend, record)
        except ConveyorError as exc:
            return JSONResponse({"error": f"{exc}; a task whose message is in a dead-letter "
                                          "queue can always be retried"}, 409)
        return self._answer(request, {"replayed": 1, "skipped": [], "from": "record",
                                      "message": "retried: 1"}, f"/tasks/{_quote(task_id)}")

    def _replay(self, queue: str, ids: list[str] | None) -> dict[str, Any]:
        from conveyor.dlq import replay

        letters = self.app.broker.dead_letters(queue, limit=100_000)
        chosen = [d for d in letters if ids is None or d.message_id in ids]
        return replay(self.app, chosen).to_json()

    async def dead_action(self, request: Request) -> Response:
        ok, _ = await self.action_allowed(request)
        if not ok:
            return JSONResponse({"error": "action refused (read-only, or no valid CSRF "
                                          "token)"}, 403)
        queue = request.path_params["queue"]
        what = request.path_params["what"]
        raw = await request.form()
        ids = None if raw.get("all") == "1" else [str(v) for v in raw.getlist("id")]
        if ids == []:
            return JSONResponse({"error": "name dead letters with id=..., or all=1"}, 400)
        if what == "replay":
            result = await self.call(self._replay, queue, ids)
            message = f"replayed {result['replayed']}, skipped {len(result['skipped'])}"
        else:
            count = await self.call(self.app.broker.delete_dead, queue, ids)
            result, message = {"deleted": count}, f"deleted {count}"
        return self._answer(request, {**result, "message": message},
                            "/dead?" + urlencode({"queue": queue}))

    # -- login ------------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        if request.method == "POST":
            form = await request.form()
            token = form.get("token")
            if self.guard.token_ok(str(token) if token is not None else None):
                answer = RedirectResponse("/", 303)
                answer.set_cookie(COOKIE, self.guard.session(), httponly=True,
                                  samesite="strict", secure=request.url.scheme == "https")
                return answer
            return self.render(request, "login.html", status=401, page="login",
                               error="wrong token")
        return self.render(request, "login.html", page="login", error=None)

    # -- the ASGI app -----------------------------------------------------------------------
    def asgi(self) -> Starlette:
        """The Starlette app, with authentication and security headers around every route."""
        routes = [
            Route("/", self.flow_page, name="flow"),
            Route("/tasks", self.tasks_page, name="tasks"),
            Route("/tasks/{task_id:path}", self.task_page, name="task_page"),
            Route("/workers", self.workers_page, name="workers"),
            Route("/dead", self.dead_page, name="dead"),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/metrics", self.metrics),
            Route("/api/flow", self.api_flow),
            Route("/api/history", self.api_history),
            Route("/api/queues", self.api_queues),
            Route("/api/events", self.events),
            Route("/api/tasks", self.api_tasks),
            Route("/api/workers", self.api_workers),
            Route("/api/dead/{queue}/{what:str}", self.dead_action, methods=["POST"]),
            Route("/api/dead/{queue}", self.api_dead),
            Route("/api/revoke/{task_id:path}", self.revoke, methods=["POST"]),
            Route("/api/retry/{task_id:path}", self.retry, methods=["POST"]),
            Route("/api/tasks/{task_id:path}", self.api_task),
            Route("/api/groups/{group_id:path}", self.api_group),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ]
        guard = self.guard

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await self._start()
            try:
                yield
            finally:
                await self._stop()

        async def protect(request: Request,
                          call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if not guard.enabled and not is_loopback(request.url.hostname or ""):
                # Without credentials only loopback can reach us; a page on another site
                # whose name was re-pointed at 127.0.0.1 (DNS rebinding) is refused here.
                return PlainTextResponse("this dashboard serves localhost only; configure a "
                                         "token or basic auth to serve other host names", 403)
            public = request.url.path in ("/login",) or request.url.path.startswith("/static/")
            if not public and not guard.allows(request.headers.get("authorization"),
                                               request.cookies.get(COOKIE)):
                if guard.basic is not None and guard.token is None:
                    return PlainTextResponse("authentication required", 401, headers={
                        "WWW-Authenticate": 'Basic realm="conveyor dashboard"'})
                if "text/html" in request.headers.get("accept", ""):
                    return RedirectResponse("/login", 303)
                return JSONResponse({"error": "authentication required"}, 401)
            answer = await call_next(request)
            answer.headers.setdefault(
                "Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                "style-src 'self'; script-src 'self'; frame-ancestors 'none'")
            answer.headers.setdefault("X-Content-Type-Options", "nosniff")
            answer.headers.setdefault("Referrer-Policy", "same-origin")
            return answer

        return Starlette(routes=routes, lifespan=lifespan,
                         middleware=[Middleware(BaseHTTPMiddleware, dispatch=protect)])

    async def _start(self) -> None:
        if self.sample:
            self.reader.start()

    async def _stop(self) -> None:
        self.reader.stop()


def _quote(task_id: str) -> str:
    from urllib.parse import quote

    return quote(task_id, safe="")
