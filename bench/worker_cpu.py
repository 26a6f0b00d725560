"""CPU time and driver calls per task of one worker draining a backlog, for source trees A/B.

    python bench/worker_cpu.py redis|postgres [--n 10000] [--rounds 4] TREE [TREE ...]

Each TREE holds a ``conveyor`` package assembled from one commit (see bench/pickup_ab.py).
Per round and tree: N no-op tasks are sent (from the first tree), one worker of two threads
drains them; the CPU time of the worker process and of the server's processes (utime + stime
from /proc, from the first task taken to the last) is divided by the tasks drained. CPU time
barely moves with the machine's load, unlike rates, so trees can be compared on a busy
machine. The worker also counts its broker and backend calls (reserve, get_many, store,
store_many, ack_many ... per task), which shows how well it batches. Throwaway servers come
from the test fixtures (tests/servers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pickup_ab import clean_stores  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
TICK = os.sysconf("SC_CLK_TCK")
COUNTED = {"broker": ("reserve", "ack", "ack_many", "extend", "enqueue", "enqueue_many"),
           "backend": ("get", "get_many", "finished_many", "store", "store_many", "entries",
                       "put_entry")}


def _worker_app() -> object:
    """The worker's app (``-A worker_cpu:_APP``): pickup_ab's task, its calls counted and
    written to $WORKER_CPU_CALLS at shutdown."""
    from collections import Counter

    from pickup_ab import _APP  # type: ignore[import-not-found]

    from conveyor import signals

    app = _APP
    calls: Counter[str] = Counter()

    def count(obj: object, name: str) -> None:
        real = getattr(obj, name, None)
        if real is None:  # a method an older tree does not have
            return

        def call(*args: object, **kw: object) -> object:
            calls[name] += 1
            return real(*args, **kw)

        setattr(obj, name, call)

    for name in COUNTED["broker"]:
        count(app.broker, name)
    for name in COUNTED["backend"]:
        count(app.backend, name)

    @signals.worker_shutdown.connect
    def dump(sender: object = None, **kw: object) -> None:
        Path(os.environ["WORKER_CPU_CALLS"]).write_text(json.dumps(calls))

    return app


def _cpu(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _server_pids(port: int) -> set[int]:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                         text=True, check=False).stdout
    pids = {int(p) for p in re.findall(r"pid=(\d+)", out)}
    for pid in list(pids):  # PostgreSQL: the postmaster's children do the work
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                                  check=False).stdout.split()
        pids |= {int(c) for c in children}
    return pids


def _drain(kind: str, url: str, *, tree: str, send_tree: str, n: int,
           work: Path) -> tuple[float, float, float, dict[str, float]]:
    from conveyor.registry import broker_from_url

    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_BROKER_URL=url, CONVEYOR_BACKEND_URL=url,
               WORKER_CPU_CALLS=str(work / "calls.json"),
               PYTHONPATH=os.pathsep.join([send_tree, str(HERE.parent)]))
    subprocess.run([sys.executable, str(HERE.parent / "pickup_ab.py"), "_client", "send",
                    str(n), str(work / "ids.json")], env=env, check=True, capture_output=True)
    env["PYTHONPATH"] = os.pathsep.join([tree, str(HERE.parent)])
    worker = subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "-A",
                               "worker_cpu:_APP", "-c", "2", "-l", "WARNING"], env=env,
                              cwd=HERE.parent, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    broker = broker_from_url(url)
    port = int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    try:
        def left() -> int:
            stats = broker.stats("default")
            return stats.ready + stats.reserved

        while left() >= n:
            time.sleep(0.01)
        servers = _server_pids(port)
        start_w, start_s, began, todo = _cpu({worker.pid}), _cpu(servers), time.time(), left()
        while left() > 0:
            time.sleep(0.05)
        time.sleep(0.3)  # the last acks
        end_w, end_s = _cpu({worker.pid}), _cpu(servers | _server_pids(port))
        took = time.time() - began
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(60)
        broker.close()
    calls = json.loads((work / "calls.json").read_text())
    return ((end_w - start_w) / todo * 1e6, (end_s - start_s) / todo * 1e6, todo / took,
            {k: v / n for k, v in sorted(calls.items())})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["redis", "postgres"])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=4)
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.servers.postgres import postgres_server
    from tests.servers.redis import redis_server

    work = Path(f"/tmp/worker-cpu-{os.getpid()}")
    work.mkdir()
    results: dict[str, list[tuple[float, float, float, dict[str, float]]]] = {
        t: [] for t in opts.trees}
    with (redis_server() if opts.kind == "redis" else postgres_server()) as server:
        for rnd in range(opts.rounds):
            order = opts.trees if rnd % 2 == 0 else opts.trees[::-1]
            for tree in order:
                out = _drain(opts.kind, server.url, tree=tree, send_tree=opts.trees[0], n=opts.n,
                             work=work)
                clean_stores(opts.kind, server.url)
                results[tree].append(out)
                print(rnd, tree, f"worker {out[0]:.0f} us, server {out[1]:.0f} us, "
                      f"{out[2]:.0f}/s", {k: round(v, 3) for k, v in out[3].items()},
                      flush=True)
    print(f"\n{opts.kind}: medians per task (worker CPU, server CPU, drain rate)")
    for tree, values in results.items():
        print(f"{tree}: worker {statistics.median(v[0] for v in values):.0f} us, "
              f"server {statistics.median(v[1] for v in values):.0f} us, "
              f"{statistics.median(v[2] for v in values):.0f}/s; calls "
              f"{ {k: round(c, 3) for k, c in values[-1][3].items()} }")


if __name__ == "__main__":
    main()
elif os.environ.get("WORKER_CPU_CALLS"):
    _APP = _worker_app()
