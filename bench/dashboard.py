"""The dashboard's task list over a large history: how long pages take to render.

    python bench/dashboard.py [--n 1000000] [--only redis|postgres] [--repeat 7]
                              [--redis-url URL] [--postgres-url URL] [--json PATH]

Fills the result backend with ``--n`` records (90 % SUCCESS, 5 % FAILURE, 3 % PENDING, 1 %
RETRY, 1 % STARTED; 20 task names, 4 queues, 8 workers; written with ``store_many`` as
workers would, so every index is maintained as in production), then times, ``--repeat``
times each, the dashboard's ``/tasks`` page rendered through the ASGI app (query, decoding,
HTML) for: the first page, a state filter, a task-name filter, state + queue, an id prefix,
and the 20th page reached by cursors; then the flow page's hour rebuilt from the backend
by a dashboard that just started, of every queue and of one queue (how long, how many
queries, how close the sampled counts come to what was written in those minutes). Reports
medians and the slowest run in milliseconds.

Without URLs it starts throwaway servers (as bench/run.py does). Given URLs are written
to under their own key prefix / table prefix (``benchdash``) and cleaned up afterwards.
A benchmark, not a test: the figures depend on the machine; label them with its load.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from run import postgres_server, redis_server  # noqa: E402

STATES = [("SUCCESS", 90), ("FAILURE", 5), ("PENDING", 3), ("RETRY", 1), ("STARTED", 1)]
NAMES = [f"shop.tasks.task_{i:02d}" for i in range(20)]
QUEUES = ["default", "high", "low", "emails"]
WORKERS = [f"worker{i}@host{i % 3}" for i in range(8)]
CHUNK = 500


def chunk(index: int, size: int, seed: int = 7) -> list[Any]:
    """``size`` realistic StoredRecords, the ``index``-th chunk (its own random stream)."""
    from conveyor.record import Attempt, TaskRecord

    rng = random.Random(seed * 1_000_003 + index)
    population = [s for s, weight in STATES for _ in range(weight)]
    made = []
    for _ in range(size):
        state = rng.choice(population)
        worker = rng.choice(WORKERS)
        # Stamped as a worker stamps a record, just before the write (the backend indexes
        # the time of the write; the hour's rebuild estimates a crowded minute from the
        # records' own times).
        now = time.time()
        began = now - rng.random() / 10
        attempts = [] if state == "PENDING" else [Attempt(
            1, worker, began, now,
            {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry"}.get(state),
            "ValueError" if state in ("FAILURE", "RETRY") else None,
            "boom" if state in ("FAILURE", "RETRY") else None).to_dict()]
        made.append(TaskRecord(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)), state,
            task=rng.choice(NAMES), queue=rng.choice(QUEUES),
            worker=None if state == "PENDING" else worker,
            result=rng.randint(0, 10**6) if state == "SUCCESS" else None,
            attempts=attempts, updated_at=now,
            date_done=now if state in ("SUCCESS", "FAILURE") else None).to_stored())
    return made


def fill(backend: Any, n: int) -> tuple[float, Counter[tuple[int, str | None]]]:
    """Write ``n`` records with four writer threads, each building a chunk and writing it at
    once (as workers stamp and write); return the seconds it took and the SUCCESS and
    FAILURE records written per second of their write and queue."""

    def write(index: int, size: int) -> Counter[tuple[int, str | None]]:
        made = chunk(index, size)
        backend.store_many(made, ttl=86400.0)
        stamp = int(time.time())
        return Counter((stamp, r.queue) for r in made if r.state in ("SUCCESS", "FAILURE"))

    started = time.perf_counter()
    pending: list[Any] = []
    outcomes: Counter[tuple[int, str | None]] = Counter()
    with ThreadPoolExecutor(4) as pool:
        for done, at in enumerate(range(0, n, CHUNK)):
            pending.append(pool.submit(write, done, min(CHUNK, n - at)))
            if len(pending) >= 8:  # a bounded number in flight: memory stays flat
                outcomes.update(pending.pop(0).result())
            if done % 200 == 0:
                rate = done * CHUNK / max(time.perf_counter() - started, 1e-9)
                print(f"  {done * CHUNK:,} / {n:,} records ({rate:,.0f}/s)", file=sys.stderr,
                      flush=True)
        for future in pending:
            outcomes.update(future.result())
    return time.perf_counter() - started, outcomes


def measure(url: str, n: int, repeat: int, options: dict[str, Any]) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from conveyor import Conveyor
    from conveyor.contrib.dashboard import Dashboard
    from conveyor.registry import backend_from_url

    app = Conveyor("benchdash", broker=f"memory://benchdash-{uuid.uuid4().hex}", backend=url)
    # The driver built with its own key/table prefix (options the URL does not carry).
    backend = app._backend = backend_from_url(url, **options)
    seconds, outcomes = fill(backend, n)
    print(f"  filled {n:,} records in {seconds:.0f} s ({n / seconds:,.0f}/s)", file=sys.stderr)
    client = TestClient(Dashboard(app, sample=False).asgi(), base_url="http://127.0.0.1")
    some = client.get("/api/tasks", params={"limit": 1}).json()["tasks"][0]["id"]

    def twentieth() -> str:
        cursor = None
        for _ in range(19):
            cursor = client.get("/api/tasks", params={
                "limit": 50, **({"cursor": cursor} if cursor else {})}).json()["cursor"]
        return f"/tasks?limit=50&cursor={cursor}"

    cases = {
        "first page (50)": "/tasks",
        "state=FAILURE": "/tasks?state=FAILURE",
        "task name": f"/tasks?name={NAMES[7]}",
        "state=RETRY + queue": "/tasks?state=RETRY&queue=emails",
        "id prefix (8 chars)": f"/tasks?id={some[:8]}&limit=50&cursor=",
        "20th page by cursor": twentieth(),
    }
    results: dict[str, Any] = {"fill_seconds": seconds, "n": n}
    for label, path in cases.items():
        client.get(path)  # warm
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            reply = client.get(path)
            times.append((time.perf_counter() - t) * 1000)
            assert reply.status_code == 200, (path, reply.status_code, reply.text[:200])
        rows = reply.text.count("<tr data-task-id=")
        results[label] = {"median_ms": round(statistics.median(times), 1),
                          "max_ms": round(max(times), 1), "rows": rows}
        print(f"  {label:<22} median {statistics.median(times):7.1f} ms, "
              f"max {max(times):7.1f} ms, {rows} rows", file=sys.stderr)
    # The flow page's hour rebuilt by a dashboard that just started: 60 minute reads, each
    # bounded (history.PER_MINUTE records), whatever the backend holds; of every queue, then
    # of one queue (the query's queue filter: an index on SQL, a filtered walk on Redis).
    from conveyor.contrib.dashboard.history import BackendHistory

    for label, queue in (("history rebuild (60 min)", None),
                         ("one queue's history", QUEUES[3])):
        times, reads = [], 0
        for _ in range(max(1, repeat // 2)):
            history = BackendHistory(backend, queue=queue)
            t = time.perf_counter()
            rebuilt = history.series()
            times.append((time.perf_counter() - t) * 1000)
            reads = history.reads
            # What was written in the minutes the rebuild covers (it ends with this one).
            first = (int(time.time() // 60) - history.minutes + 1) * 60
        counted = sum(m["succeeded"] + m["failed"] for m in rebuilt["minutes"])
        written = sum(c for (at, q), c in outcomes.items()
                      if at >= first and (queue is None or q == queue))
        results[label] = {
            "median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1),
            "queries": reads, "estimated": rebuilt["estimated"],
            "succeeded+failed counted": counted, "succeeded+failed written": written,
            "error_pct": round(100 * (counted - written) / max(written, 1), 2)}
        print(f"  {label:<22} median {statistics.median(times):7.1f} ms, max "
              f"{max(times):7.1f} ms, {reads} queries, {counted:,} outcomes counted of "
              f"{written:,} written (estimated: {rebuilt['estimated']})", file=sys.stderr)
    app.close()
    return results


def clean_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    batch: list[bytes] = []
    for key in client.scan_iter("benchdash:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)
    client.close()


def clean_postgres(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in ("results", "joins", "entries", "schema", "messages", "dead"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS benchdash_{table}"))
    engine.dispose()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", choices=["redis", "postgres"])
    parser.add_argument("--redis-url")
    parser.add_argument("--postgres-url")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"n": args.n, "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.only in (None, "redis"):
        with redis_server(args.redis_url) as url:
            print(f"redis ({url.split('@')[-1]})", file=sys.stderr)
            try:
                out["redis"] = measure(url, args.n, args.repeat,
                                       {"prefix": "benchdash:", "query_index": True})
            finally:
                if args.redis_url:  # a throwaway server goes away with its data
                    clean_redis(url)
    if args.only in (None, "postgres"):
        with postgres_server(args.postgres_url) as url:
            print("postgres", file=sys.stderr)
            try:
                out["postgres"] = measure(url, args.n, args.repeat,
                                          {"table_prefix": "benchdash_"})
            finally:
                if args.postgres_url:
                    clean_postgres(url)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
