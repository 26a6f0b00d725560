"""apply_async's timing options: what Celery accepts works, the rest is a one-line error that
names the argument, raised before anything is sent."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.exceptions import TaskOptionError


@pytest.fixture
def app() -> Conveyor:
    app = Conveyor("opts", broker="memory://opts", backend="memory://opts")

    @app.task(name="opts.add")
    def add(a: int, b: int) -> int:
        return a + b

    return app


def _message(app: Conveyor, **options: Any) -> Any:
    return app.build_message("opts.add", (1, 2), **options).message


@pytest.mark.parametrize(("options", "message"), [
    ({"countdown": "10"}, "countdown must be a number of seconds, not str '10'; convert"),
    ({"countdown": timedelta(seconds=5)}, "countdown must be a number of seconds, not timedelta"),
    ({"countdown": True}, "countdown must be a number of seconds, not bool"),
    ({"countdown": float("nan")}, "countdown=nan is not a finite number"),
    ({"countdown": -1}, "countdown=-1 is negative"),
    ({"eta": timedelta(minutes=1)}, "eta is a point in time, not a timedelta"),
    ({"eta": "tomorrow"}, "eta='tomorrow' is not an ISO 8601 date and time"),
    ({"eta": [1]}, "eta must be a number of seconds, not list"),
    ({"expires": "60"}, "expires='60' is not an ISO 8601 date and time"),
    ({"expires": 0}, "expires=0 is not in the future"),
    ({"countdown": 1, "eta": datetime.now()}, "give countdown or eta, not both"),
])
def test_wrong_timing_options_are_one_line_errors_naming_the_argument(
        app: Conveyor, options: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskOptionError) as info:
        app.tasks["opts.add"].apply_async((1, 2), **options)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert app.broker.stats("default").ready == 0


def test_eta_takes_aware_and_naive_datetimes_iso_strings_and_epoch_seconds(app: Conveyor
                                                                            ) -> None:
    soon = time.time() + 30
    aware = datetime.fromtimestamp(soon, tz=timezone.utc)
    naive_local = datetime.fromtimestamp(soon)           # naive means the producer's local time
    for eta in (aware, naive_local, aware.isoformat(), soon,
                aware.astimezone(timezone(timedelta(hours=-7)))):
        assert _message(app, eta=eta).eta == pytest.approx(soon, abs=0.01)


def test_countdown_and_expires_take_numbers_and_points_in_time(app: Conveyor) -> None:
    before = time.time()
    msg = _message(app, countdown=10, expires=60)
    assert before + 10 <= msg.eta <= time.time() + 10
    assert before + 60 <= msg.expires <= time.time() + 60
    at = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert _message(app, expires=at).expires == pytest.approx(at.timestamp())
    assert _message(app, expires=at.isoformat()).expires == pytest.approx(at.timestamp())


def test_retry_countdown_is_checked_too(app: Conveyor) -> None:
    @app.task(bind=True)
    def flaky(self: Any) -> None:
        raise self.retry(countdown="5")

    with pytest.raises(TaskOptionError, match="countdown must be a number of seconds"):
        flaky.retry(countdown="5")
