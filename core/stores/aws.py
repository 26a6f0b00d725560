"""Shared by the SQS broker and the S3 result backend: URL options, boto3 clients, errors.

Both URLs carry every option in the query (``sqs://?region=eu-west-1&prefix=shop-``,
``s3://bucket/prefix?region=eu-west-1``). The options common to both are read here
(:data:`CLIENT_OPTIONS`); each driver reads its own with :func:`options_of` and rejects unknown
ones. Credentials are optional: without them boto3's usual chain applies (environment,
``~/.aws``, instance or task role). They may be given as ``aws_access_key_id`` /
``aws_secret_access_key`` query options or as the URL's user info (``sqs://KEY:SECRET@``);
either way :class:`~conveyor.url.URL` masks the secret.

Every botocore/boto3 exception is translated in :class:`AwsErrors`. Also here, since both
drivers use S3: :func:`check_bucket` (exists, reachable, in the client's region) and
:class:`LargePayloads` (message bodies too large for SQS, kept as S3 objects).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from conveyor.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionLostError,
    DriverError,
    ValueRefusedError,
)
from conveyor.registry import require
from conveyor.url import URL

#: Query options every AWS URL accepts (handed to boto3's session and client).
CLIENT_OPTIONS = ("region", "endpoint_url", "aws_access_key_id", "aws_secret_access_key",
                  "aws_session_token", "profile", "connect_timeout", "max_attempts")

#: Error codes meaning "your credentials or permissions are wrong": waiting cannot fix them.
_AUTH_CODES = {
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken",
    "ExpiredTokenException", "AuthFailure", "InvalidToken", "MissingAuthenticationToken",
    "AWS.SimpleQueueService.AccessDenied", "KMS.AccessDeniedException",
}
#: A bucket or queue that does not exist (or lives in another region).
_MISSING_CODES = {
    "NoSuchBucket": "the bucket does not exist: create it (aws s3 mb s3://NAME) or fix the URL",
    "AWS.SimpleQueueService.NonExistentQueue": (
        "the queue does not exist: create it, or drop create_queues=false from the URL"),
    "QueueDoesNotExist": (
        "the queue does not exist: create it, or drop create_queues=false from the URL"),
    "PermanentRedirect": "the bucket is in another region: set ?region= to the bucket's region",
    "AuthorizationHeaderMalformed": "wrong region: set ?region= to the resource's region",
    "IllegalLocationConstraintException": "wrong region: set ?region= to the bucket's region",
}
#: Throttling and server-side trouble: retryable.
_RETRY_CODES = {
    "Throttling", "ThrottlingException", "RequestThrottled", "RequestThrottledException",
    "SlowDown", "ServiceUnavailable", "InternalError", "InternalFailure", "RequestTimeout",
    "RequestTimeoutException", "RequestLimitExceeded", "TooManyRequestsException",
    "KMS.ThrottlingException", "OverLimit", "AWS.SimpleQueueService.PurgeQueueInProgress",
}
#: Values the server refuses: trying again cannot succeed.
_REFUSED_CODES = {
    "InvalidMessageContents", "MessageTooLong", "InvalidParameterValue", "EntityTooLarge",
    "KeyTooLongError", "InvalidArgument", "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong",
}


_XML_ERROR = re.compile(r"<Code>([^<]*)</Code>\s*<Message>([^<]*)</Message>")


def options_of(url: URL, known: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``url``: its query (which wins) over keyword ``given`` over the
    ``known`` defaults, coerced to the defaults' types. Unknown names raise, naming the known
    ones. User info (``KEY:SECRET@``) fills in the two credential options."""
    values: dict[str, Any] = dict(known)
    parts = urlsplit(url.raw)
    raw: dict[str, Any] = {**given, **url.query}
    if parts.username:
        raw.setdefault("aws_access_key_id", unquote(parts.username))
    if parts.password:
        raw.setdefault("aws_secret_access_key", unquote(parts.password))
    for name, value in raw.items():
        if name not in values:
            raise ConfigurationError(
                f"unknown option {name!r} in {url.masked!r}: known options are "
                f"{', '.join(sorted(values))}")
        values[name] = _coerce(url, name, value, known[name])
    return values


def _coerce(url: URL, name: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value if value != "" or default is None else default
    try:
        if isinstance(default, bool):
            if value.lower() in {"1", "true", "yes", "on"}:
                return True
            if value.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        return float(value)
    except ValueError as exc:
        raise ConfigurationError(f"option {name}={value!r} in {url.masked!r} is not a valid "
                                 f"{type(default).__name__}") from exc


def client_defaults() -> dict[str, Any]:
    """The defaults of :data:`CLIENT_OPTIONS` (None: boto3's own)."""
    return {"region": None, "endpoint_url": None, "aws_access_key_id": None,
            "aws_secret_access_key": None, "aws_session_token": None, "profile": None,
            "connect_timeout": 5.0, "max_attempts": 3}


_SESSION_LOCK = threading.Lock()


def make_client(service: str, options: Mapping[str, Any], *, read_timeout: float = 30.0,
                pool: int = 32) -> Any:
    """A thread-safe boto3 client for ``service`` ("sqs", "s3") built from ``options``.

    Retries are botocore's "standard" mode (throttling and transient errors, with backoff) up
    to ``max_attempts``; ``read_timeout`` must outlast the longest long poll. Raises
    :class:`~conveyor.exceptions.MissingDependencyError` without boto3.
    """
    boto3 = require("boto3", extra="aws")
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": max(1, int(options["max_attempts"]))},
        connect_timeout=float(options["connect_timeout"]), read_timeout=read_timeout,
        max_pool_connections=pool,
        # Path-style addressing works with any endpoint (moto, MinIO) and any bucket name.
        s3={"addressing_style": "path"} if options["endpoint_url"] else None)
    # boto3 sessions are not thread-safe to create clients from; the clients themselves are.
    with _SESSION_LOCK, AwsErrors(service, "client setup"):
        session = boto3.session.Session(
            aws_access_key_id=options["aws_access_key_id"],
            aws_secret_access_key=options["aws_secret_access_key"],
            aws_session_token=options["aws_session_token"],
            region_name=options["region"] or None, profile_name=options["profile"] or None)
        region = session.region_name or "us-east-1"
        return session.client(service, region_name=region,
                              endpoint_url=options["endpoint_url"] or None, config=config)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` ('' for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class AwsErrors:
    """The one place botocore/boto3 exceptions become conveyor's, always ``from`` the original.

    Unreachable endpoints, timeouts, throttling and 5xx answers become
    :class:`ConnectionLostError` (retryable); refused or missing credentials and denied
    permissions become :class:`AuthenticationError`, as do a missing bucket or queue and a
    wrong region (each with the fix); a value the service refuses becomes
    :class:`ValueRefusedError`; anything else :class:`DriverError`. Messages name the service
    and the resource, never a secret. Stateless: one instance can guard every call.
    """

    __slots__ = ("_what",)

    def __init__(self, service: str, where: str) -> None:
        self._what = f"{service} {where}".strip()

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, DriverError | ConfigurationError):
            return
        from botocore import exceptions as bx

        if not isinstance(exc, bx.BotoCoreError | bx.ClientError):
            if isinstance(exc, OSError):
                raise ConnectionLostError(f"{self._what}: {exc}") from exc
            return
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            raise AuthenticationError(
                f"{self._what}: no AWS credentials found: set aws_access_key_id and "
                "aws_secret_access_key on the URL, the AWS_* environment variables, or a "
                "profile") from exc
        if isinstance(exc, bx.ProfileNotFound | bx.NoRegionError):
            raise AuthenticationError(f"{self._what}: {exc}") from exc
        if isinstance(exc, bx.ParamValidationError):
            raise ValueRefusedError(f"{self._what}: {exc}") from exc
        if not isinstance(exc, bx.ClientError):
            # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
            # ConnectionClosedError, ...: the endpoint is down or the network is.
            raise ConnectionLostError(f"{self._what} unreachable: {exc}") from exc
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        # One line, whatever the server sent.
        message = " ".join(str(exc.response.get("Error", {}).get("Message") or code).split())
        if code.isdigit() and (xml := _XML_ERROR.search(message)):
            # An XML error body the JSON protocol could not parse (moto's server sends them
            # for SQS): its code and message.
            code, message = xml.group(1), xml.group(2)
        text = f"{self._what}: {code}: {message}"
        if code in _AUTH_CODES or status == 403:
            raise AuthenticationError(
                f"{self._what}: credentials or permissions refused ({code}: {message}): check "
                "aws_access_key_id / aws_secret_access_key (or the profile or role) and the "
                "IAM policy") from exc
        if code in _MISSING_CODES:
            raise AuthenticationError(f"{self._what}: {_MISSING_CODES[code]}") from exc
        if code in _RETRY_CODES or status >= 500 or status == 429:
            raise ConnectionLostError(text) from exc
        if code in _REFUSED_CODES:
            raise ValueRefusedError(text) from exc
        raise DriverError(text) from exc


def _region_fix(what: str, found: str | None, region: str) -> None:
    if found and found != region:
        raise AuthenticationError(
            f"{what} is in region {found}, not {region}: set ?region={found} on the URL")


def check_bucket(s3: Any, bucket: str) -> None:
    """HeadBucket: the endpoint is reachable, the credentials are accepted, the bucket exists
    and lives in the client's region (S3 names it in ``x-amz-bucket-region``; a client in
    another region pays a redirect per request, or fails). Raises translated errors."""
    region = str(s3.meta.region_name)
    what = f"s3 bucket {bucket!r}"
    with AwsErrors("s3", f"bucket {bucket!r}"):
        from botocore.exceptions import ClientError

        try:
            found = s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            _region_fix(what, headers.get("x-amz-bucket-region"), region)
            if error_code(exc) in {"404", "NoSuchBucket", "NotFound"}:
                raise ClientError({"Error": {"Code": "NoSuchBucket", "Message": ""}},
                                  "HeadBucket") from exc
            raise
    headers = found.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    _region_fix(what, found.get("BucketRegion") or headers.get("x-amz-bucket-region"),
                region)


class LargePayloads:
    """Message bodies too large for SQS, as S3 objects ``<prefix>payloads/<uuid>`` in one
    bucket; the message carries a pointer (:meth:`put`'s JSON text). Thread-safe; the S3
    client is made on first use. Objects are deleted by :meth:`delete` (the broker calls it
    with the ack); anything left behind is for a bucket lifecycle rule."""

    def __init__(self, location: str, options: Mapping[str, Any]) -> None:
        bucket, _, prefix = location.partition("/")
        self.bucket = bucket
        self._prefix = (prefix.strip("/") + "/" if prefix.strip("/") else "") + "payloads/"
        self._options = options
        self._client: Any = None
        self._lock = threading.Lock()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_client("s3", self._options)
            return self._client

    def put(self, body: bytes) -> str:
        """Store ``body``; return the pointer text the message carries."""
        key = f"{self._prefix}{uuid.uuid4().hex}"
        with AwsErrors("s3", f"bucket {self.bucket!r}"):
            self._s3().put_object(Bucket=self.bucket, Key=key, Body=body)
        return json.dumps({"bucket": self.bucket, "key": key})

    def get(self, pointer: str) -> tuple[bytes | None, tuple[str, str]]:
        """The body a pointer names (None when the object is gone) and ``(bucket, key)``."""
        found = json.loads(pointer)
        where = (str(found["bucket"]), str(found["key"]))
        with AwsErrors("s3", f"bucket {where[0]!r}"):
            from botocore.exceptions import ClientError

            try:
                got = self._s3().get_object(Bucket=where[0], Key=where[1])
            except ClientError as exc:
                if error_code(exc) != "NoSuchKey":
                    raise
                return None, where
            return bytes(got["Body"].read()), where

    def delete(self, places: Iterable[tuple[str, str]]) -> None:
        """Delete the objects at ``(bucket, key)`` places, 1,000 a request."""
        by_bucket: dict[str, list[str]] = {}
        for bucket, key in places:
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):
                with AwsErrors("s3", f"bucket {bucket!r}"):
                    self._s3().delete_objects(Bucket=bucket, Delete={
                        "Objects": [{"Key": k} for k in keys[start:start + 1000]],
                        "Quiet": True})

    def check(self) -> None:
        """The bucket exists, is reachable and in the client's region (:func:`check_bucket`)."""
        check_bucket(self._s3(), self.bucket)

    def close(self) -> None:
        """Close the S3 client's connections. Idempotent."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()
