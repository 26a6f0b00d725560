"""Chord join latency: a chord of N no-op header tasks, from the last header task's finish
to the body's start, conveyor against Celery on the same Redis, in one run; and each on
PostgreSQL as the result backend (Celery then joins with its polling ``chord_unlock``).

    python bench/chord.py                    # N=1,000, 3 rounds, throwaway servers
    python bench/chord.py --n 200 --rounds 1 # smoke test

Reported per system: medians over the rounds of *join* (body started - last header task
finished) and *total* (chord sent -> body result read). Workers: 2 threads, defaults else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

from run import (  # noqa: E402
    _env,
    _with_db,
    flush_redis,
    postgres_server,
    redis_server,
    stop_process_group,
    truncate_postgres,
)


def conveyor_chord(n: int) -> tuple[float, dict[str, Any]]:
    from conveyor_app import chord_body, stamp

    from conveyor import chord

    sent = time.time()
    value = chord([stamp.s(i) for i in range(n)], chord_body.s())().get(timeout=600)
    return sent, value


def celery_chord(n: int) -> tuple[float, dict[str, Any]]:
    from celery import chord
    from celery_app import chord_body, stamp

    sent = time.time()
    value = chord([stamp.s(i) for i in range(n)], chord_body.s())().get(timeout=600)
    return sent, value


def client_main(kind: str, n: int) -> None:
    """Run in a fresh interpreter with the system's environment: warm up, then one chord."""
    run = conveyor_chord if kind == "conveyor" else celery_chord
    run(5)
    sent, value = run(n)
    done = time.time()
    assert value["n"] == n, value
    print(json.dumps({"join": value["started"] - value["header_done"],
                      "total": done - sent}))


def worker_cmd(kind: str) -> list[str]:
    if kind == "celery":
        return [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool",
                "threads", "-c", "2", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-Q", "celery", "-l", "WARNING"]
    return [sys.executable, "-m", "conveyor", "worker", "-A", "conveyor_app:app", "-c", "2",
            "-Q", "default", "-l", "WARNING"]


def one_round(name: str, kind: str, env: dict[str, str], clean: Any, *, n: int,
              work: Path) -> dict[str, float]:
    clean()
    with (work / f"{name}-worker.log").open("a") as log:
        worker = subprocess.Popen(worker_cmd(kind), env=env, cwd=BENCH, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        done = subprocess.run([sys.executable, __file__, "_client", kind, str(n)], env=env,
                              cwd=BENCH, capture_output=True, text=True, timeout=900,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed: {done.stderr.strip()[-800:]}")
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        stop_process_group(worker)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        client_main(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url")
    parser.add_argument("--postgres-url")
    args = parser.parse_args()
    # Stopped with SIGTERM: still stop the servers and workers this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = Path("/tmp/conveyor-bench-chord")
    work.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(args.redis_url))
        pg = stack.enter_context(postgres_server(args.postgres_url))
        pg_celery = "db+" + pg  # SQLAlchemy URL: Celery's database backend
        r = [_with_db(redis, i) for i in range(4)]
        systems = {
            "conveyor-redis": ("conveyor", _env({"CONVEYOR_BROKER_URL": r[0],
                                                 "CONVEYOR_BACKEND_URL": r[1]}),
                               flush_redis(r[:2])),
            "celery-redis": ("celery", _env({"BENCH_CELERY_BROKER_URL": r[2],
                                             "BENCH_CELERY_BACKEND_URL": r[3]}),
                             flush_redis(r[2:])),
            "conveyor-postgres": ("conveyor", _env({"CONVEYOR_BROKER_URL": pg,
                                                    "CONVEYOR_BACKEND_URL": pg}),
                                  truncate_postgres(pg)),
            "celery-redis-broker+postgres-backend": (
                "celery", _env({"BENCH_CELERY_BROKER_URL": r[2],
                                "BENCH_CELERY_BACKEND_URL": pg_celery}), flush_redis(r[2:])),
        }
        # Create conveyor's tables once, here: a worker and a client creating them at the
        # same moment can collide in PostgreSQL's catalog.
        from conveyor import Conveyor

        schema = Conveyor("schema", broker=pg, backend=pg)
        schema.broker.purge("default")
        schema.backend.get("schema-check")
        schema.close()
        results: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
        names = list(systems)
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for name in order:
                kind, env, clean = systems[name]
                try:
                    got = one_round(name, kind, env, clean, n=args.n, work=work)
                except Exception as exc:  # report and go on: one system failing is a result
                    print(f"round {round_no + 1} {name}: FAILED {exc}", flush=True)
                    continue
                results[name].append(got)
                print(f"round {round_no + 1} {name}: join {got['join'] * 1000:.1f} ms, "
                      f"total {got['total']:.2f} s", flush=True)
    print(f"\nchord of {args.n} no-op header tasks, medians over {args.rounds} rounds")
    print(f"{'system':40} {'join (ms)':>10} {'total (s)':>10}")
    medians = {}
    for name, rows in results.items():
        if not rows:
            print(f"{name:40} {'failed':>10}")
            continue
        join = statistics.median(r["join"] for r in rows) * 1000
        total = statistics.median(r["total"] for r in rows)
        medians[name] = (join, total)
        print(f"{name:40} {join:10.1f} {total:10.2f}")
    for mine, theirs in (("conveyor-redis", "celery-redis"),
                         ("conveyor-postgres", "celery-redis-broker+postgres-backend")):
        if mine in medians and theirs in medians:
            print(f"{mine} / {theirs}: join x{medians[mine][0] / medians[theirs][0]:.2f}, "
                  f"total x{medians[mine][1] / medians[theirs][1]:.2f}")


if __name__ == "__main__":
    main()
