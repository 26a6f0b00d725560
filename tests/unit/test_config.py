"""Configuration: precedence (command line > environment > code > defaults), Celery's
``app.conf`` surface, unknown keys, and ``shared_task``."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, shared_task
from conveyor.config import Settings, environment_variables
from conveyor.exceptions import ConfigurationError, ConfigurationWarning


def test_environment_beats_code_and_command_line_beats_both(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "memory://env")
    monkeypatch.setenv("CONVEYOR_TASK_DEFAULT_QUEUE", "from-env")
    app = Conveyor("x", broker="memory://code", backend="memory://code",
                   task_default_queue="from-code", result_expires=7)
    assert app.conf.broker_url == "memory://env"
    assert app.conf.task_default_queue == "from-env"
    assert app.conf.result_backend == "memory://code"
    assert app.conf.result_expires == 7
    app.conf.update(broker_url="memory://later")        # code again: the environment still wins
    assert app.conf.broker_url == "memory://env"
    app.conf.set_layer("command line", {"broker_url": "memory://cli"},
                       label="command line (--broker)")
    assert app.conf.broker_url == "memory://cli"
    assert app.conf.source("broker_url") == "command line (--broker)"
    assert app.conf.source("task_default_queue") == "environment (CONVEYOR_TASK_DEFAULT_QUEUE)"
    assert app.conf.source("result_backend") == "code"
    assert app.conf.source("worker_pool") == "default"


def test_attribute_assignment_is_code_and_loses_to_the_environment() -> None:
    s = Settings()
    s.from_environ({"CONVEYOR_RESULT_EXPIRES": "5"})
    s.result_expires = 60.0
    s.task_acks_late = False
    assert (s.result_expires, s.task_acks_late) == (5.0, False)
    assert s.source("task_acks_late") == "code"


def test_conf_update_takes_a_mapping_keywords_or_both_and_reads_as_attributes() -> None:
    app = Conveyor("x", broker="memory://", backend="memory://")
    app.conf.update({"task_default_queue": "a"}, result_expires=30)
    assert (app.conf.task_default_queue, app.conf.result_expires) == ("a", 30)
    assert app.conf["task_default_queue"] == "a"
    assert app.conf.get("result_expires") == 30
    assert app.conf.get("nothing_here", "fallback") == "fallback"
    assert "broker_url" in app.conf


def test_unknown_key_warns_with_the_nearest_setting_and_is_kept() -> None:
    app = Conveyor("x", broker="memory://", backend="memory://")
    with pytest.warns(ConfigurationWarning, match="did you mean 'task_acks_late'"):
        app.conf.update(task_ack_late=True)
    assert app.conf.task_ack_late is True
    with pytest.raises(AttributeError, match="did you mean 'result_expires'"):
        _ = app.conf.result_expire


def test_environment_strings_are_typed_by_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    s.from_environ({"CONVEYOR_WORKER_CONCURRENCY": "3", "CONVEYOR_RESULT_EXPIRES": "none",
                    "CONVEYOR_ACCEPT_CONTENT": "json, pickle",
                    "CONVEYOR_TASK_TRACK_STARTED": "off"})
    assert (s.worker_concurrency, s.result_expires, s.accept_content,
            s.task_track_started) == (3, None, ["json", "pickle"], False)
    with pytest.raises(ConfigurationError, match="worker_concurrency='many' is not a valid int"):
        Settings().from_environ({"CONVEYOR_WORKER_CONCURRENCY": "many"})


def test_every_setting_has_an_environment_variable() -> None:
    env = environment_variables()
    assert env["CONVEYOR_BROKER_URL"] == "broker_url"
    assert env["CONVEYOR_BACKEND_URL"] == env["CONVEYOR_RESULT_BACKEND"] == "result_backend"
    assert env["CONVEYOR_WORKER_CONCURRENCY"] == "worker_concurrency"


def test_config_from_object_takes_a_module_path_and_a_namespace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfg_mod_x1.py").write_text(textwrap.dedent("""
        import os
        broker_url = "memory://module"
        result_expires = 11.0
        UPPER = 1
        class Django:
            CONVEYOR_TASK_DEFAULT_QUEUE = "django"
            CONVEYOR_RESULT_EXPIRES = 12.0
            OTHER_SETTING = "ignored"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Conveyor("x", backend="memory://")
    app.config_from_object("cfg_mod_x1")
    assert (app.conf.broker_url, app.conf.result_expires) == ("memory://module", 11.0)
    app.config_from_object("cfg_mod_x1:Django", namespace="CONVEYOR")
    assert (app.conf.task_default_queue, app.conf.result_expires) == ("django", 12.0)
    sys.modules.pop("cfg_mod_x1", None)


@pytest.fixture
def forget_shared_tasks() -> Iterator[None]:
    """Shared tasks defined by a test must not be registered on later tests' apps."""
    from conveyor import shared

    saved = list(shared._definitions)
    yield
    shared._definitions[:] = saved


@pytest.mark.usefixtures("forget_shared_tasks")
def test_shared_task_is_registered_on_every_app_and_acts_on_the_current_one() -> None:
    first = Conveyor("first", broker="memory://shared-1", backend="memory://shared-1")

    @shared_task
    def double(x: int) -> int:
        return 2 * x

    second = Conveyor("second", broker="memory://shared-2", backend="memory://shared-2")
    name = f"{__name__}.test_shared_task_is_registered_on_every_app_and_acts_on_the_current_one"\
           ".<locals>.double"
    assert name in first.tasks and name in second.tasks
    assert double(4) == 8
    double.delay(1)
    assert second.broker.stats("default").ready == 1
    assert first.broker.stats("default").ready == 0
    first.set_current()
    double.delay(2)
    assert first.broker.stats("default").ready == 1
    assert double.app is first
