"""A real HTTP endpoint for SQS and S3: moto in server mode (``moto[s3,sqs]``, flask,
flask-cors). boto3 talks to it over HTTP exactly as to AWS; moto's in-process mock decorators
are never used. ``CONVEYOR_TEST_AWS_ENDPOINT`` names an endpoint to use instead (another moto
server, LocalStack, or AWS itself with real credentials in the environment).

``sqs_url`` and ``s3_url`` give each test a queue-name prefix and a key prefix of its own, so
tests sharing the session's server never see each other's queues or objects.
:class:`MotoServer` also serves the fault tests, which stop it and start it again on the same
port (moto keeps its state in the process, so queues and objects survive the restart).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers import free_port, unavailable, wait_for_port

ENV = "CONVEYOR_TEST_AWS_ENDPOINT"
REGION = "us-east-1"
#: moto accepts any credentials; real AWS takes them from the environment instead.
CREDENTIALS = "aws_access_key_id=testing&aws_secret_access_key=testing"


_RECEIVES = threading.Lock()


def _atomic_receives() -> None:
    """Make moto's ReceiveMessage atomic, as SQS's is: moto checks a message's visibility and
    marks it received without a lock, so two concurrent receives can both take it (a
    "duplicate under a live lease" that real SQS does not produce that way). Receives are
    serialized, except while one waits for messages in a long poll."""
    from moto.sqs.models import Queue, SQSBackend

    if getattr(SQSBackend.receive_message, "conveyor_atomic", False):
        return
    receive, wait = SQSBackend.receive_message, Queue.wait_for_messages

    def atomic_receive(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _RECEIVES:
            return receive(self, *args, **kwargs)

    def unlocked_wait(self: Any, timeout: int) -> None:
        _RECEIVES.release()
        try:
            wait(self, timeout)
        finally:
            _RECEIVES.acquire()

    atomic_receive.conveyor_atomic = True  # type: ignore[attr-defined]
    SQSBackend.receive_message = atomic_receive
    Queue.wait_for_messages = unlocked_wait


class MotoServer:
    """``moto.server.ThreadedMotoServer`` on 127.0.0.1, on a port fixed at creation."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start serving and wait until the port accepts connections."""
        from moto.server import ThreadedMotoServer

        _atomic_receives()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port,
                                          verbose=False)
        self._server.start()
        if not wait_for_port(self.port, timeout=20):
            raise RuntimeError(f"moto server did not start on port {self.port}")

    def stop(self) -> None:
        """Stop serving (the state stays in this process). Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()


class AuthMotoServer:
    """A moto server in a process of its own that checks every request's signature, as AWS
    does: ``INITIAL_NO_AUTH_ACTION_COUNT`` (moto's server-mode setting) lets only the first
    three actions through, which create an IAM user allowed everything and its access key
    (:attr:`credentials`). Any other key, or this key with a wrong secret, is refused."""

    def __init__(self) -> None:
        self.port = free_port()
        self.credentials: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server, make the IAM user and its key (the three free actions)."""
        import boto3

        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_port(self.port, timeout=30):
            self.stop()
            raise RuntimeError(f"moto server (auth) did not start on port {self.port}")
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="conveyor")
        iam.put_user_policy(UserName="conveyor", PolicyName="everything", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="conveyor")["AccessKey"]
        self.credentials = {"aws_access_key_id": key["AccessKeyId"],
                            "aws_secret_access_key": key["SecretAccessKey"]}

    def stop(self) -> None:
        """End the server process. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def auth_moto() -> Iterator[AuthMotoServer]:
    """A moto server enforcing request signatures (see :class:`AuthMotoServer`)."""
    server = AuthMotoServer()
    try:
        server.start()
    except RuntimeError as exc:
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()


def _client(service: str, endpoint: str) -> Any:
    import boto3

    creds = {} if os.environ.get(ENV) else {"aws_access_key_id": "testing",
                                            "aws_secret_access_key": "testing"}
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **creds)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The endpoint URL of a moto server shared by the whole session."""
    given = os.environ.get(ENV)
    if given:
        yield given
        return
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        unavailable("moto server: pip install 'moto[s3,sqs]' flask flask-cors, or set " + ENV)
    server = MotoServer()
    try:
        server.start()
    except RuntimeError as exc:
        unavailable(str(exc))
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def aws_bucket(moto_endpoint: str) -> str:
    """A bucket of this session's own on the endpoint."""
    name = f"conveyor-test-{uuid.uuid4().hex[:12]}"
    _client("s3", moto_endpoint).create_bucket(Bucket=name)
    return name


def aws_query(endpoint: str) -> str:
    """The query options pointing a driver at ``endpoint``."""
    creds = "" if os.environ.get(ENV) else "&" + CREDENTIALS
    return f"region={REGION}&endpoint_url={endpoint}{creds}"


@pytest.fixture
def sqs_url(moto_endpoint: str, aws_bucket: str) -> str:
    """An ``sqs://`` URL with a queue-name prefix of this test's own and large payloads
    going to the session's bucket."""
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    return (f"sqs://?{aws_query(moto_endpoint)}&prefix={prefix}"
            f"&large_payload_bucket={aws_bucket}/{prefix}")


@pytest.fixture
def s3_url(moto_endpoint: str, aws_bucket: str) -> str:
    """An ``s3://`` URL on the session's bucket, under a key prefix of this test's own."""
    return f"s3://{aws_bucket}/r{uuid.uuid4().hex[:10]}?{aws_query(moto_endpoint)}"
