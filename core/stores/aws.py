"""Shared by the SQS broker and the S3 result backend: URL options, boto3 clients, errors.

Both URLs carry every option in the query (``sqs://?region=eu-west-1&prefix=shop-``,
``s3://bucket/prefix?region=eu-west-1``). The options common to both are read here
(:data:`CLIENT_OPTIONS`); each driver reads its own with :func:`options_of` and rejects unknown
ones. Credentials are optional: without them boto3's usual chain applies (environment,
``~/.aws``, instance or task role). They may be given as ``aws_access_key_id`` /
``aws_secret_access_key`` query options or as the URL's user info (``sqs://KEY:SECRET@``);
either way :class:`~conveyor.url.URL` masks the secret.

Every botocore/boto3 exception is translated in :class:`AwsErrors`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
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
        self._what = f"{service} {where}"

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
        message = exc.response.get("Error", {}).get("Message") or code
        text = f"{self._what}: {code}: {message}"
        if code in _AUTH_CODES or status == 403:
            raise AuthenticationError(
                f"{text} (check the credentials and the IAM permissions)") from exc
        if code in _MISSING_CODES:
            raise AuthenticationError(f"{self._what}: {_MISSING_CODES[code]}") from exc
        if code in _RETRY_CODES or status >= 500 or status == 429:
            raise ConnectionLostError(text) from exc
        if code in _REFUSED_CODES:
            raise ValueRefusedError(text) from exc
        raise DriverError(text) from exc
