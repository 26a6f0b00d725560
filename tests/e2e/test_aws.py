"""SQS and S3 end to end: delays longer than SQS's hop, large payloads, outages, refusals.

The pair tests in ``test_e2e.py`` already run on ``sqs+s3`` and the mixed AWS pairs; these
cover what only the AWS drivers do. The hop length is shortened with the broker URL's
``max_delay`` option, so a delay of several hops takes seconds, not hours.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.servers.moto import REGION, AuthMotoServer, MotoServer, aws_query

from .conftest import Pair, Workers, wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.parametrize("pair", ["sqs+s3"],
                                                                  indirect=True)]

HOP = 2


def _hopping(app: Any, pair: Pair) -> str:
    url = f"{pair.broker}&max_delay={HOP}"
    app.close()
    app.conf.broker_url = url
    return url


def test_countdown_of_several_hops_never_runs_early_and_is_never_lost(
        app: Any, workers: Workers, pair: Pair, tmp_path: Path) -> None:
    import e2e_tasks

    url = _hopping(app, pair)
    assert app.broker.capabilities.max_delay == HOP
    first = workers.start("-c", "2", broker=url)
    sent = time.time()
    countdowns = (1.0, 3.5, 5.0, 7.0)
    results = [e2e_tasks.nap.apply_async((0,), countdown=c) for c in countdowns]
    time.sleep(3.0)  # some are between hops now: the worker dies with a hop in flight
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    workers.start("-c", "2", broker=url)
    for countdown, result in zip(countdowns, results, strict=True):
        run = result.get(timeout=40)
        assert run["started"] >= sent + countdown - 0.5, (
            f"countdown={countdown} ran {sent + countdown - run['started']:.2f}s early")
        record = app.record(result.id)
        assert sum(a["outcome"] == "success" for a in record.attempts) == 1


def test_large_arguments_and_results_travel_through_s3(
        app: Any, workers: Workers, pair: Pair) -> None:
    import e2e_tasks

    workers.start("-c", "2")
    big = "z" * (400 * 1024)
    result = e2e_tasks.add.delay(big, "!")
    assert result.get(timeout=30) == big + "!"
    import boto3

    query = dict(part.split("=", 1) for part in pair.broker.split("?", 1)[1].split("&"))
    bucket, _, prefix = query["large_payload_bucket"].partition("/")
    s3 = boto3.client("s3", endpoint_url=query["endpoint_url"], region_name=REGION,
                      aws_access_key_id="testing", aws_secret_access_key="testing")

    def payloads() -> int:
        return int(s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0))

    wait_until(lambda: payloads() == 0, timeout=10, what="the payload to go with the ack")


# -- outages --------------------------------------------------------------------------------
@pytest.fixture
def own_moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


def test_endpoint_down_and_back_workers_resume_and_nothing_is_lost(
        app: Any, pair: Pair, own_moto: MotoServer, tmp_path: Path) -> None:
    import boto3
    import e2e_tasks

    bucket = f"fault-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=own_moto.endpoint, region_name=REGION,
                 aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    query = aws_query(own_moto.endpoint)
    broker = f"sqs://?{query}&prefix=f{uuid.uuid4().hex[:8]}-&max_attempts=2&connect_timeout=1"
    backend = f"s3://{bucket}/r?{query}&max_attempts=2&connect_timeout=1"
    app.close()
    app.conf.update({"broker_url": broker, "result_backend": backend})
    logs = tmp_path / "fault-logs"
    logs.mkdir()
    workers = Workers(Pair("fault", broker, backend), app.conf.task_default_queue, logs)
    try:
        workers.start("-c", "2")
        workers.start("-c", "2")
        before = [e2e_tasks.add.delay(i, 1) for i in range(10)]
        assert before[0].get(timeout=30) == 1
        own_moto.stop()
        time.sleep(4.0)
        own_moto.start()
        after = [e2e_tasks.add.delay(i, 2) for i in range(10)]
        values = [r.get(timeout=60) for r in before + after]
        assert values == [i + 1 for i in range(10)] + [i + 2 for i in range(10)]
        for result in before + after:
            record = app.record(result.id)
            assert sum(a["outcome"] == "success" for a in record.attempts) == 1
        wait_until(lambda: "reachable again" in workers.logs(), timeout=20,
                   what="the workers to log that the endpoint is back")
        for log in sorted(logs.glob("worker-*.log")):
            text = log.read_text(errors="replace")
            assert text.count("broker unavailable (") <= 1, f"logged per poll in {log.name}"
    finally:
        workers.stop_all()


def _conveyor(broker: str, backend: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", "--broker", broker, "--backend",
                           backend, *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=cwd)


def _one_line_from_check_and_the_worker(broker: str, backend: str, fix: str, secret: str,
                                        cwd: Path) -> None:
    """``conveyor check`` fails with one FAIL line holding ``fix``; a worker exits non-zero
    with one ``error:`` line holding it; neither shows ``secret`` nor a traceback."""
    check = _conveyor(broker, backend, "check", cwd=cwd)
    assert check.returncode == 1
    failures = [line for line in check.stderr.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 1, check.stderr
    assert fix in failures[0]
    assert secret not in check.stdout + check.stderr
    assert "Traceback" not in check.stderr
    worker = _conveyor(broker, backend, "worker", cwd=cwd)
    assert worker.returncode != 0
    errors = [line for line in worker.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, worker.stderr
    assert fix in errors[0]
    assert errors[0].removeprefix("error:").strip() in failures[0], (errors[0], failures[0])
    assert secret not in worker.stderr
    assert "Traceback" not in worker.stderr


@pytest.mark.parametrize("problem", ["missing-bucket", "missing-queue", "bucket-in-another-region",
                                     "queues-in-another-region"])
def test_missing_or_misplaced_bucket_or_queue_is_one_clear_line_from_check_and_the_worker(
        pair: Pair, moto_endpoint: str, aws_bucket: str, problem: str, tmp_path: Path) -> None:
    import boto3

    secret = "s3cr3t-value"
    query = aws_query(moto_endpoint).replace("aws_secret_access_key=testing",
                                             f"aws_secret_access_key={secret}")
    elsewhere = query.replace(f"region={REGION}", "region=eu-west-1")
    prefix = f"m{uuid.uuid4().hex[:8]}-"
    broker = f"sqs://?{query}&prefix={prefix}"
    backend = pair.backend
    if problem == "missing-bucket":
        backend = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/r?{query}"
        fix = "bucket does not exist"
    elif problem == "missing-queue":
        broker += "&create_queues=false"
        fix = "create_queues=false"
    elif problem == "bucket-in-another-region":
        backend = f"s3://{aws_bucket}/r?{elsewhere}"
        fix = f"is in region {REGION}, not eu-west-1: set ?region={REGION}"
    else:  # the queues exist, in us-east-1; the URL says eu-west-1
        boto3.client("sqs", endpoint_url=moto_endpoint, region_name=REGION,
                     aws_access_key_id="testing", aws_secret_access_key="testing"
                     ).create_queue(QueueName=f"{prefix}default")
        broker = f"sqs://?{elsewhere}&prefix={prefix}&create_queues=false"
        fix = "in region eu-west-1 and create_queues=false"
    _one_line_from_check_and_the_worker(broker, backend, fix, secret, tmp_path)


@pytest.mark.parametrize("problem", ["wrong-secret", "unknown-key"])
def test_rejected_credentials_are_one_clear_line_from_check_and_the_worker(
        pair: Pair, auth_moto: AuthMotoServer, problem: str, tmp_path: Path) -> None:
    import boto3

    good = auth_moto.credentials
    bucket = f"auth-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=auth_moto.endpoint, region_name=REGION,
                 **good).create_bucket(Bucket=bucket)

    def urls(key: str, secret: str) -> tuple[str, str]:
        # Percent-encoded: AWS secrets may hold '+' and '/'.
        query = (f"region={REGION}&endpoint_url={auth_moto.endpoint}"
                 f"&aws_access_key_id={key}&aws_secret_access_key={quote(secret, safe='')}")
        return f"sqs://?{query}&prefix=a{uuid.uuid4().hex[:8]}-", f"s3://{bucket}/r?{query}"

    # The server takes the right key: check passes with it.
    ok = _conveyor(*urls(good["aws_access_key_id"], good["aws_secret_access_key"]), "check",
                   cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    secret = "wr0ng-s3cret-value"
    if problem == "wrong-secret":
        broker, _ = urls(good["aws_access_key_id"], secret)
        fix = "SignatureDoesNotMatch"
    else:
        broker, _ = urls("AKIAUNKNOWNKEY000000", secret)
        fix = "InvalidClientTokenId"
    _, backend = urls(good["aws_access_key_id"], good["aws_secret_access_key"])
    _one_line_from_check_and_the_worker(
        broker, backend, f"credentials or permissions refused ({fix}", secret, tmp_path)
