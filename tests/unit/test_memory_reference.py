"""The memory drivers' own promises beyond the contract (which cannot speak for URL names or
wake-up latency of every driver): found by mutation testing (tools/mutation.py)."""

from __future__ import annotations

import time
import uuid

from conveyor.backend import StoredRecord
from conveyor.registry import backend_from_url, broker_from_url


def test_memory_brokers_of_different_names_do_not_share_queues() -> None:
    name = uuid.uuid4().hex
    first, second = broker_from_url(f"memory://{name}-a"), broker_from_url(f"memory://{name}-b")
    first.enqueue("q", b"only in a")
    assert second.reserve(["q"], lease=5.0) == []
    assert [r.body for r in broker_from_url(f"memory://{name}-a").reserve(["q"], lease=5.0)] == [
        b"only in a"]


def test_memory_backends_of_different_names_do_not_share_records() -> None:
    name = uuid.uuid4().hex
    first = backend_from_url(f"memory://{name}-a")
    first.store(StoredRecord("t", "SUCCESS", b"x"), ttl=None)
    assert backend_from_url(f"memory://{name}-b").get("t") is None
    assert backend_from_url(f"memory://{name}-a").get("t") == StoredRecord("t", "SUCCESS", b"x")


def test_memory_reserve_wakes_when_the_earliest_delay_falls_due() -> None:
    broker = broker_from_url(f"memory://{uuid.uuid4().hex}")
    broker.enqueue("q", b"soon", delay=0.3)
    broker.enqueue("q", b"much later", delay=600.0)
    started = time.monotonic()
    got = broker.reserve(["q"], lease=5.0, wait=5.0)
    assert [r.body for r in got] == [b"soon"]
    assert time.monotonic() - started < 2.0, "slept past the earliest due time"


def test_every_contract_test_the_memory_drivers_cite_exists() -> None:
    """The reference drivers name, per method, the contract tests that hold them to a rule;
    a renamed or removed test must not leave a dangling name in docs/driver-authors.md's
    reference."""
    import inspect
    import re

    from conveyor import testing
    from conveyor.backends import memory as memory_backend
    from conveyor.brokers import memory as memory_broker

    defined = {name for _, cls in inspect.getmembers(testing, inspect.isclass)
               for name in dir(cls) if name.startswith("test_")}
    for module in (memory_backend, memory_broker):
        cited = set(re.findall(r"``(test_\w+)``", inspect.getsource(module)))
        assert cited, module.__name__
        missing = sorted(cited - defined)
        assert not missing, f"{module.__name__} cites contract tests that do not exist: {missing}"
