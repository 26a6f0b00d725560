"""The pick-up check's one backend call on its own: client and server CPU per call.

    python bench/pickup_lookup.py redis|postgres [--ids 8] [--terminal 0] [--calls 3000]

A throwaway server (tests/servers) holds 6,000 records, half SUCCESS and half PENDING (300
bytes of data each; a drain's PENDING records hold about 150); each variant reads the same
``--ids`` ids (``--terminal`` of them SUCCESS) ``--calls`` times, five interleaved rounds,
medians. Redis:
the driver's ``get_many`` (a pipeline of HMGETs), ``finished_many`` (one script call) and a
pipeline of HGET state (then HMGET for the terminal ones). PostgreSQL: the prepared statement
of ``get_many`` and the ``state IN (...)`` variants tried for ``finished_many`` (none was
cheaper, so the driver keeps the default: bench/README.md, the pick-up section). Server CPU
comes from /proc (clock ticks: about 3 us resolution at 3,000 calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from worker_cpu import ROOT, _cpu, _server_pids  # bench/ is on sys.path when run as a script


def _redis_variants(backend: Any, batch: list[str]) -> dict[str, Callable[[], object]]:
    client, prefix = backend._client, backend._result
    terminal = {b"SUCCESS", b"FAILURE", b"REVOKED"}

    def states_first() -> object:
        pipe = client.pipeline(transaction=False)
        for task_id in batch:
            pipe.hget(prefix + task_id, "state")
        done = [i for i, s in zip(batch, pipe.execute(), strict=True) if s in terminal]
        if not done:
            return {}
        pipe = client.pipeline(transaction=False)
        for task_id in done:
            pipe.hmget(prefix + task_id, ("state", "data"))
        return dict(zip(done, pipe.execute(), strict=True))

    return {"get_many (pipeline of HMGET)": lambda: backend.get_many(batch),
            "finished_many (one script call)": lambda: backend.finished_many(batch),
            "HGET state pipeline, then data": states_first}


def _postgres_variants(backend: Any, batch: list[str]) -> dict[str, Callable[[], object]]:
    get = backend._pg.get
    terminal = "'FAILURE', 'REVOKED', 'SUCCESS'"
    live = ("(t.expires_at IS NULL OR t.expires_at > "
            "extract(epoch from statement_timestamp())::float8)")
    statements = {
        "get_many's statement": get,
        "+ AND state IN (...)": f"{get} AND t.state IN ({terminal})",
        "state IN on a subquery with OFFSET 0": (
            f"SELECT task_id, state, data FROM ({get} OFFSET 0) AS f "
            f"WHERE f.state IN ({terminal})"),
        "state IN on a MATERIALIZED CTE": (
            f"WITH f AS MATERIALIZED ({get}) SELECT task_id, state, data FROM f "
            f"WHERE f.state IN ({terminal})"),
        "data only when terminal (CASE)": (
            f"SELECT task_id, state, CASE WHEN state IN ({terminal}) THEN data END "
            f"FROM {backend._t.name} AS t WHERE task_id = ANY(%s::text[]) AND {live}"),
    }

    def run(statement: str) -> Callable[[], object]:
        def call() -> object:
            with backend._db.raw() as conn:
                return conn.execute(statement, (batch,), prepare=True).fetchall()
        return call

    return {name: run(statement) for name, statement in statements.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["redis", "postgres"])
    parser.add_argument("--ids", type=int, default=8)
    parser.add_argument("--terminal", type=int, default=0)
    parser.add_argument("--calls", type=int, default=3000)
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from conveyor.backend import StoredRecord
    from conveyor.registry import backend_from_url
    from tests.servers.postgres import postgres_server
    from tests.servers.redis import redis_server

    with (redis_server() if opts.kind == "redis" else postgres_server()) as server:
        backend = backend_from_url(server.url)
        ids = [uuid.uuid4().hex for _ in range(6000)]
        backend.store_many([StoredRecord(i, "PENDING", os.urandom(300)) for i in ids], ttl=3600)
        backend.store_many([StoredRecord(i, "SUCCESS", os.urandom(300)) for i in ids[:3000]],
                           ttl=3600)
        batch = ids[3000 - opts.terminal:3000 - opts.terminal + opts.ids]
        variants = (_redis_variants if opts.kind == "redis" else _postgres_variants)(
            backend, batch)
        for call in variants.values():
            for _ in range(20):
                call()
        servers = _server_pids(int(server.url.rsplit(":", 1)[1].split("/")[0]))
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
        for _ in range(5):
            for name, call in variants.items():
                server_at, client_at, wall_at = (_cpu(servers), time.process_time(),
                                                 time.perf_counter())
                for _ in range(opts.calls):
                    call()
                results[name].append(((time.process_time() - client_at) / opts.calls * 1e6,
                                      (_cpu(servers) - server_at) / opts.calls * 1e6,
                                      (time.perf_counter() - wall_at) / opts.calls * 1e6))
    print(f"{opts.kind}: {opts.ids} ids, {opts.terminal} terminal; medians per call")
    for name, values in results.items():
        print(f"{name:40} client {statistics.median(v[0] for v in values):6.1f} us, server "
              f"{statistics.median(v[1] for v in values):6.1f} us, wall "
              f"{statistics.median(v[2] for v in values):6.1f} us")


if __name__ == "__main__":
    main()
