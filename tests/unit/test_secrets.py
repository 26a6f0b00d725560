"""Credentials never reach a repr, a log line or ``conveyor check``, whatever the URL's form."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor.exceptions import InvalidURLError
from conveyor.url import URL, mask_password


@pytest.mark.parametrize(("raw", "masked"), [
    ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:hun@ter2@host/0", "redis://user:***@host/0"),
    ("redis://host/0?password=hunter2&db=1", "redis://host/0?password=***&db=1"),
    ("rediss://host/0?Password=hunter2#frag", "rediss://host/0?Password=***#frag"),
    ("sqs://?region=eu&aws_secret_access_key=hunter2&aws_session_token=hunter2",
     "sqs://?region=eu&aws_secret_access_key=***&aws_session_token=***"),
    ("mongodb://u:p:hunter2@h1,h2/db?authSource=admin&tls=true",
     "mongodb://u:***@h1,h2/db?authSource=admin&tls=true"),
    ("postgresql+psycopg://user@host/db?api_key=hunter2", "postgresql+psycopg://user@host/db"
     "?api_key=***"),
    ("sqlite:///dir/a@b.db", "sqlite:///dir/a@b.db"),
    ("s3://bucket/pre@fix?region=eu", "s3://bucket/pre@fix?region=eu"),
])
def test_every_credential_is_masked(raw: str, masked: str) -> None:
    assert mask_password(raw) == masked
    assert "hunter2" not in mask_password(raw)


@pytest.mark.parametrize("raw", [
    "redis://:pa?hunter2@host:6379/0",  # a '?' would start the query
    "redis://:hunter2#x@host/0",  # a '#' would start the fragment
    "redis://:p@ss#hunter2@host/0",  # both an '@' and a '#'
    "redis://u:hun?ter2@host",  # no path at all
])
def test_an_unencoded_question_mark_or_hash_in_a_password_leaks_nothing(raw: str) -> None:
    assert "hunter2" not in mask_password(raw) and "ter2" not in mask_password(raw)
    try:
        shown = repr(URL(raw))
    except InvalidURLError as exc:
        shown = str(exc)
        assert "%3F" in shown and "%23" in shown
    assert "hunter2" not in shown and "ter2" not in shown
    app = Conveyor("s", broker=raw, backend="memory://")
    assert "hunter2" not in repr(app) and "ter2" not in repr(app)


def test_a_query_holding_an_at_sign_is_still_a_valid_url() -> None:
    assert str(URL("redis://host:6379/0?client_name=a@b")) == "redis://host:6379/0?client_name=a@b"
    assert "hunter2" not in str(URL("redis://:hunter2@host?client_name=a@b"))
    assert "hunter2" not in mask_password(
        "mongodb://u:p@h/db?authMechanismProperties=AWS_SESSION_TOKEN:hunter2")


def test_check_on_a_url_with_an_unencoded_question_mark_is_one_line_naming_the_fix() -> None:
    from click.testing import CliRunner

    from conveyor.cli import cli

    done = CliRunner().invoke(cli, ["--broker", "redis://:pa?hunter2@127.0.0.1:1/0",
                                    "--backend", "memory://", "check"])
    assert done.exit_code != 0
    assert "hunter2" not in done.output and "%3F" in done.output
    assert "Traceback" not in done.output and len(done.output.strip().splitlines()) <= 3


def test_an_unencoded_slash_in_a_password_is_a_clear_error_that_leaks_nothing() -> None:
    with pytest.raises(InvalidURLError, match="%2F") as caught:
        URL("redis://user:hun/ter2@host:6379/0")
    assert "hun" not in str(caught.value) and "ter2" not in str(caught.value)


def test_repr_of_an_app_masks_query_passwords_and_survives_unparseable_urls() -> None:
    app = Conveyor("s", broker="redis://host/0?password=hunter2",
                   backend="redis://user:hun/ter2@host/0")
    text = repr(app)
    assert "hunter2" not in text and "ter2" not in text and "password=***" in text
    assert "hunter2" not in str(URL("redis://host/0?password=hunter2"))
    assert "hunter2" not in repr(URL("redis://:hunter2@host/0"))


def test_repr_of_the_settings_masks_url_passwords_and_the_signing_key() -> None:
    app = Conveyor("s", broker="redis://:hunter2@host/0",
                   backend="redis://user:hun/ter2@host/0", task_signing_key="s3kr1t")
    text = repr(app.conf)
    assert "hunter2" not in text and "ter2" not in text and "s3kr1t" not in text
    assert "task_signing_key='***'" in text and "broker_url='redis://:***@host/0'" in text


@pytest.mark.parametrize("kind", ["broker", "backend"])
def test_redis_sentinel_urls_are_a_one_line_not_supported_error(kind: str) -> None:
    from conveyor.exceptions import ConfigurationError
    from conveyor.registry import backend_from_url, broker_from_url

    make = broker_from_url if kind == "broker" else backend_from_url
    with pytest.raises(ConfigurationError, match="not supported yet") as caught:
        make("redis+sentinel://:hunter2@host:26379/mymaster")
    assert "\n" not in str(caught.value) and "hunter2" not in str(caught.value)
