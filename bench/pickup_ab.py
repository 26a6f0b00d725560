"""A/B of two conveyor source trees on the worker side: drain rate and round-trip p50 on
Redis and PostgreSQL, Celery's round trip on the same Redis, interleaved rounds, medians.

    python bench/pickup_ab.py --base DIR --new DIR [--n 3000] [--roundtrips 300] [--rounds 5]

Each DIR holds a ``conveyor`` package assembled from one commit, e.g.::

    mkdir -p /tmp/ab-base/src /tmp/ab-base/pkg
    git archive <commit> core brokers backends contrib | tar -x -C /tmp/ab-base/src
    cp -r /tmp/ab-base/src/core /tmp/ab-base/pkg/conveyor
    for d in brokers backends contrib; do cp -r /tmp/ab-base/src/$d /tmp/ab-base/pkg/conveyor/; done
    # --base /tmp/ab-base/pkg

The producer always runs from ``--base`` (only the worker differs), one worker process with
two threads; the drain rate is taken from the tasks' own finish stamps (start-up excluded).
Throwaway servers are started from the test fixtures (tests/servers).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent


def _app() -> tuple[object, object]:
    """The client/worker side: one no-op task that returns when it ran."""
    if os.environ.get("AB_KIND") == "celery":
        from celery import Celery

        app = Celery("pickup_ab", broker=os.environ["AB_CELERY_BROKER"],
                     backend=os.environ["AB_CELERY_BACKEND"])
    else:
        from conveyor import Conveyor

        app = Conveyor("pickup_ab")

    @app.task(name="pickup_ab.stamp")  # type: ignore[misc]
    def stamp(i: int) -> float:
        return time.time()

    return app, stamp


def client_main(op: str, n: int, path: str) -> None:
    app, stamp = _app()
    if op == "send":
        ids = [r.id for r in stamp.map([(i,) for i in range(n)])]  # type: ignore[attr-defined]
        app.flush_pending()  # type: ignore[attr-defined]
        Path(path).write_text(json.dumps(ids))
        print("{}")
    elif op == "collect":
        from conveyor.record import TaskRecord

        ids = json.loads(Path(path).read_text())
        deadline = time.time() + 600
        while True:
            got = app.backend.get_many(ids)  # type: ignore[attr-defined]
            done = [TaskRecord.from_stored(r) for r in got.values() if r.state == "SUCCESS"]
            if len(done) == len(ids) or time.time() > deadline:
                break
            time.sleep(0.2)
        stamps = sorted(r.value(app.result_codec) for r in done)  # type: ignore[attr-defined]
        print(json.dumps({"rate": (len(stamps) - 1) / (stamps[-1] - stamps[0])}))
    else:  # round trips
        for i in range(10):
            stamp.delay(i).get(timeout=30)  # type: ignore[attr-defined]
        lat = []
        for i in range(n):
            t = time.perf_counter()
            stamp.delay(i).get(timeout=30)  # type: ignore[attr-defined]
            lat.append(time.perf_counter() - t)
        print(json.dumps({"p50_ms": statistics.median(lat) * 1000}))


def _run(env: dict[str, str], *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, str(HERE), *args], env=env, capture_output=True,
                         text=True, timeout=900, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=HERE.parent)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def clean_stores(store: str, url: str) -> None:
    """Empty the bench's Redis databases 0-3, or truncate the conveyor_* PostgreSQL tables."""
    if store == "redis":
        import redis

        for db in range(4):
            redis.Redis.from_url(url.rsplit("/", 1)[0] + f"/{db}").flushdb()
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'conveyor\\_%' "
            "AND tablename <> 'conveyor_schema'")]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--roundtrips", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.servers.postgres import postgres_server
    from tests.servers.redis import redis_server

    trees = {"base": opts.base, "new": opts.new}
    work = Path(f"/tmp/pickup-ab-{os.getpid()}")
    work.mkdir()
    plain = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    results: dict[str, list[tuple[float | None, float]]] = {}
    with redis_server() as redis_srv, postgres_server() as pg_srv:
        urls = {"redis": redis_srv.url, "postgres": pg_srv.url}
        systems = [(s, v) for s in urls for v in trees] + [("celery", "-")]
        for rnd in range(opts.rounds):
            k = rnd % len(systems)
            for store, variant in systems[k:] + systems[:k]:
                if store == "celery":
                    base = urls["redis"].rsplit("/", 1)[0]
                    env = {**plain, "AB_KIND": "celery", "PYTHONPATH": str(HERE.parent),
                           "AB_CELERY_BROKER": base + "/2", "AB_CELERY_BACKEND": base + "/3"}
                    clean_stores("redis", urls["redis"])
                    worker = _start([sys.executable, "-m", "celery", "-A", "pickup_ab",
                                     "worker", "--pool", "threads", "-c", "2",
                                     "--without-gossip", "--without-mingle",
                                     "--without-heartbeat", "-l", "WARNING"], env,
                                    work / "celery.log")
                    try:
                        time.sleep(2)
                        out: tuple[float | None, float] = (
                            None, _run(env, "_client", "rt", str(opts.roundtrips), "-")["p50_ms"])
                    finally:
                        _stop(worker)
                else:
                    url = urls[store]
                    env = {**plain, "CONVEYOR_BROKER_URL": url, "CONVEYOR_BACKEND_URL": url,
                           "PYTHONPATH": os.pathsep.join([opts.base, str(HERE.parent)])}
                    wenv = {**env, "PYTHONPATH": os.pathsep.join(
                        [trees[variant], str(HERE.parent)])}
                    clean_stores(store, url)
                    ids = str(work / "ids.json")
                    _run(env, "_client", "send", str(opts.n), ids)
                    worker = _start([sys.executable, "-m", "conveyor", "worker", "-A",
                                     "pickup_ab:_APP", "-c", "2", "-l", "WARNING"], wenv,
                                    work / f"{store}-{variant}.log")
                    try:
                        rate = _run(env, "_client", "collect", "0", ids)["rate"]
                        out = (rate, _run(env, "_client", "rt", str(opts.roundtrips),
                                          "-")["p50_ms"])
                    finally:
                        _stop(worker)
                clean_stores("redis" if store == "celery" else store, urls["redis" if store ==
                                                                      "celery" else store])
                results.setdefault(f"{store}/{variant}", []).append(out)
                print(rnd, store, variant, out, flush=True)
    celery = statistics.median(rt for _, rt in results["celery/-"])
    print("\nmedians: drain tasks/s, round trip p50 ms, round trip / Celery's")
    for name, values in results.items():
        drains = [d for d, _ in values if d is not None]
        rt = statistics.median(r for _, r in values)
        drain = f"{statistics.median(drains):8.0f}" if drains else "       -"
        print(f"{name:16s} {drain}  {rt:6.2f} ms  {rt / celery:.2f}x")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_client":
    client_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
elif __name__ == "__main__":
    main()
else:
    _APP, _STAMP = _app()
    app = _APP
