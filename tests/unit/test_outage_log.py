"""OutageLog: an outage is reported when it starts, every so often while it lasts, and when it
ends; never once per retry."""

from __future__ import annotations

import logging

import pytest

from conveyor import outage as outage_module
from conveyor.outage import OutageLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_said_once_then_every_period_then_its_end(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(outage_module.time, "monotonic", clock)
    log = logging.getLogger("test.outage")
    outage = OutageLog(log, "broker", every=30.0)
    caplog.set_level(logging.INFO, logger="test.outage")
    for _ in range(60):  # 29.5 s of retries, twice a second
        outage.failed(ConnectionError("refused"))
        clock.now += 0.5
    assert [r.getMessage() for r in caplog.records] == [
        "broker unavailable (refused): retrying with backoff"]
    assert outage.failing
    clock.now += 1.0
    outage.failed(ConnectionError("still refused"))
    outage.failed(ConnectionError("still refused"))
    assert caplog.records[-1].getMessage() == "broker still unavailable after 31s: still refused"
    assert len(caplog.records) == 2
    clock.now += 2.25
    outage.recovered()
    outage.recovered()  # no outage any more: nothing to say
    assert caplog.records[-1].getMessage() == "broker reachable again after 33.2s"
    assert len(caplog.records) == 3 and not outage.failing
    outage.failed(ConnectionError("again"))  # a new outage starts a new report
    assert caplog.records[-1].getMessage() == "broker unavailable (again): retrying with backoff"


def test_the_first_line_takes_the_given_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.outage.level")
    outage = OutageLog(logging.getLogger("test.outage.level"), "broker",
                       first_level=logging.ERROR)
    outage.failed(OSError("down"))
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
