"""URLs, the driver registry, settings and serialization."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conveyor import Conveyor
from conveyor.config import Settings
from conveyor.exceptions import (
    ConfigurationError,
    ConfigurationWarning,
    ConveyorError,
    ImproperlyConfiguredError,
    InvalidURLError,
    MessageDecodeError,
    MissingDependencyError,
    SerializationError,
    UnknownSchemeError,
)
from conveyor.message import Message
from conveyor.registry import BROKER_GROUP, broker_from_url, find_driver
from conveyor.serialization import Codec, Signer
from conveyor.url import URL


def test_url_masks_the_password_in_str_and_repr() -> None:
    url = URL("redis://:s3cret@host:6379/0")
    assert "s3cret" not in str(url) and "s3cret" not in repr(url)
    assert str(url) == "redis://:***@host:6379/0"
    assert URL("postgresql+psycopg://bob:pw@db/x").masked == "postgresql+psycopg://bob:***@db/x"
    assert URL("sqlite:///x.db").masked == "sqlite:///x.db"


def test_url_scheme_resolves_in_full_then_by_base() -> None:
    url = URL("postgresql+psycopg://db/x")
    assert (url.scheme, url.base_scheme) == ("postgresql+psycopg", "postgresql")


@pytest.mark.parametrize("raw", ["", "localhost:6379", "redis//x", "://x"])
def test_malformed_url_is_a_clear_error(raw: str) -> None:
    with pytest.raises(InvalidURLError, match="URL"):
        URL(raw)


def test_unknown_scheme_lists_known_ones_and_suggests() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        broker_from_url("reddis://localhost")
    message = str(info.value)
    assert "Did you mean 'redis://'" in message and "memory" in message


def test_missing_client_library_names_the_extra(tmp_path: object) -> None:
    # Run in a child where importing redis fails, as on a machine without the extra.
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from conveyor.registry import broker_from_url\n"
        "try:\n    broker_from_url('redis://localhost')\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "MissingDependencyError" in out.stdout
    assert "pip install 'conveyor[redis]'" in out.stdout


def test_import_conveyor_imports_no_client_library() -> None:
    code = ("import sys, conveyor\n"
            "bad = [m for m in ('redis', 'sqlalchemy', 'psycopg', 'pymysql', 'boto3', 'pymongo')"
            " if m in sys.modules]\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_builtin_drivers_are_published_as_entry_points() -> None:
    assert find_driver(BROKER_GROUP, URL("memory://")).__name__ == "MemoryBroker"
    assert find_driver(BROKER_GROUP, URL("sqlite:///x.db")).__name__ == "SQLBroker"


def test_every_error_is_a_conveyor_error_and_the_builtin_a_caller_catches() -> None:
    assert issubclass(MissingDependencyError, ImportError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(UnknownSchemeError, ConveyorError)


def test_settings_precedence_env_beats_app() -> None:
    s = Settings()
    s.from_environ({"CONVEYOR_BROKER_URL": "redis://env", "CONVEYOR_RESULT_EXPIRES": "5",
                    "CONVEYOR_TASK_ACKS_LATE": "false"})
    assert (s.broker_url, s.result_expires, s.task_acks_late) == ("redis://env", 5.0, False)
    s.update({"broker": "memory://", "task_default_queue": "code"})
    assert (s.broker_url, s.task_default_queue) == ("redis://env", "code")


def test_unknown_setting_suggests_the_right_name() -> None:
    with pytest.warns(ConfigurationWarning, match="did you mean 'result_expires'"):
        Conveyor("x", result_expire=10)


def test_contradicting_settings_are_flagged() -> None:
    s = Settings(broker_visibility_timeout=5.0, worker_heartbeat_interval=10.0)
    assert any("heartbeat" in p for p in s.check())
    with pytest.raises(ImproperlyConfiguredError):
        s.validate()


def test_default_is_one_sqlite_file_in_the_working_directory(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.delenv("CONVEYOR_BROKER_URL", raising=False)
    monkeypatch.delenv("CONVEYOR_BACKEND_URL", raising=False)
    app = Conveyor("x")
    assert app.conf.broker_url == app.conf.result_backend == "sqlite:///conveyor.db"


def test_config_from_object_reads_lowercase_settings() -> None:
    class Config:
        broker_url = "memory://cfg"
        result_expires = 12.0
        IGNORED = 1

    app = Conveyor("x")
    app.config_from_object(Config)
    assert (app.conf.broker_url, app.conf.result_expires) == ("memory://cfg", 12.0)


def test_json_codec_refuses_unencodable_values_at_send_time() -> None:
    codec = Codec(serializer="json", accept=["json"])
    with pytest.raises(SerializationError, match="JSON"):
        codec.pack({"x": object()})


def test_pickle_must_be_accepted_explicitly_and_warns() -> None:
    with pytest.raises(ConfigurationError, match="accept_content"):
        Codec(serializer="pickle", accept=["json"])
    with pytest.warns(UserWarning, match="pickle"):
        codec = Codec(serializer="pickle", accept=["json", "pickle"])
    assert codec.unpack(*codec.pack({1, 2})) == {1, 2}
    json_only = Codec(serializer="json", accept=["json"])
    with pytest.raises(MessageDecodeError, match="not accepted"):
        json_only.unpack("pickle", codec.pack(1)[1])


def test_signed_messages_verify_and_forged_ones_do_not() -> None:
    signer = Signer("key")
    msg = Message(id="1", task="t", args=[1])
    data = msg.encode(signer)
    assert Message.decode(data, signer).args == [1]
    with pytest.raises(MessageDecodeError, match="signature"):
        Message.decode(data.replace(b'"args":[1]', b'"args":[2]'), signer)
    with pytest.raises(MessageDecodeError, match="not signed"):
        Message.decode(msg.encode(Signer(None)), signer)


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[]", b'{"v": 99}', b'{"v":1,"id":1}'])
def test_undecodable_messages_raise_message_decode_error(data: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        Message.decode(data, Signer(None))
