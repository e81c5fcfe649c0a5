"""A local S3 for tests: moto's server app (object lock included), behind a fault plan.

One server per test process, started on first use (moto's app costs a few hundred
milliseconds to build, a test should not pay it): `moto_s3()` hands it out with its state reset
and a fault plan of the caller's, so each test starts from an empty S3.

    with moto_s3() as (endpoint_url, plan):
        plan.inject("provision", "timeout_after_commit")
        boto3.client("s3", endpoint_url=endpoint_url, ...).create_bucket(...)  # times out

moto does not check credentials: any key pair signs, so the keys an adapter issues work.

Faults from the `FaultPlan` hit the S3 calls an `ObjectStorageDriver` makes first in each
operation (path-style addressing, `/<bucket>` requests only):

| S3 call                                       | Operation       |
|-----------------------------------------------|-----------------|
| CreateBucket (`PUT /<bucket>`)                | provision       |
| HeadBucket (`HEAD /<bucket>`)                 | get             |
| GetBucketTagging (`GET /<bucket>?tagging`)    | find_by_token   |
| ListObjectVersions, PutObjectLockConfiguration| action          |
| DeleteBucket (`DELETE /<bucket>`)             | deprovision     |

`timeout_before` and `timeout_after_commit` hang past the adapters' test timeout (before or
after moto did the work); `server_error` is a 503, `throttled` S3's own throttling answer (503
SlowDown with Retry-After), `quota_exceeded` 400 TooManyBuckets; `deleted_out_of_band` deletes
the bucket (its locked objects too) before the call goes through.

One departure from moto, towards S3: a bucket with object lock may change its default
retention while it holds objects (moto refuses any lock configuration on a non-empty bucket).

For an end-to-end test of the broker, `fake_outscale_cloud(tmp_path)` gives the settings and
credentials of an `outscale` adapter whose OAPI is a fake Outscale and whose OOS is this S3.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any
from urllib.parse import parse_qs

import boto3
import requests
from botocore.config import Config
from werkzeug.wrappers import Response

from providers.base import AccessKey, Bucket
from providers.faults import Fault, FaultPlan, Operation
from tests.adapters.harness import HANG_SECONDS, serve_wsgi

ORDER_TAG = "broker-order"


class FaultyS3:
    """WSGI middleware: moto's S3, with the faults of `plan` (swapped per test)."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.plan = FaultPlan()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        operation, bucket = _classify(environ)
        plan = self.plan
        fault = plan.next(operation) if operation is not None else None
        if fault is None:
            return self.app(environ, start_response)
        if fault is Fault.TIMEOUT_BEFORE:
            time.sleep(HANG_SECONDS)
            answer = _error(503, "ServiceUnavailable", "Timed out before doing anything.")
        elif fault is Fault.SERVER_ERROR:
            answer = _error(503, "ServiceUnavailable", "Please try again later.")
        elif fault is Fault.THROTTLED:
            answer = _error(503, "SlowDown", "Please reduce your request rate.")
            answer.headers["Retry-After"] = str(plan.retry_after_seconds)
        elif fault is Fault.QUOTA_EXCEEDED:
            answer = _error(400, "TooManyBuckets", "You have attempted to create more buckets.")
        else:
            if fault is Fault.DELETED_OUT_OF_BAND and bucket:
                delete_bucket_out_of_band(bucket)
            answer = Response.from_app(self.app, environ, buffered=True)
            if fault is Fault.TIMEOUT_AFTER_COMMIT:
                time.sleep(HANG_SECONDS)
        return answer(environ, start_response)


def _classify(environ: dict[str, Any]) -> tuple[Operation | None, str | None]:
    """The adapter operation an S3 request stands for (see the module's table), and its bucket."""
    path = str(environ.get("PATH_INFO") or "/")
    if path.startswith("/moto-api"):
        return None, None
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or key:
        return None, bucket or None
    query = set(parse_qs(str(environ.get("QUERY_STRING") or ""), keep_blank_values=True))
    method = str(environ.get("REQUEST_METHOD") or "GET")
    if not query:
        operation = {
            "PUT": Operation.PROVISION,
            "HEAD": Operation.GET,
            "DELETE": Operation.DEPROVISION,
        }.get(method)
    elif method == "GET" and query == {"tagging"}:
        operation = Operation.FIND_BY_TOKEN
    elif (method == "GET" and "versions" in query) or (method == "PUT" and "object-lock" in query):
        operation = Operation.ACTION
    else:
        operation = None
    return operation, bucket


def _error(status: int, code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>fake</RequestId></Error>"
    )
    return Response(body, status=status, content_type="application/xml")


# -- the shared server ---------------------------------------------------------------------------


def _let_locked_buckets_change_their_retention() -> None:
    """moto refuses an object lock configuration on any bucket holding objects. S3 refuses
    only to *enable* object lock on one: a locked bucket's default retention may change at any
    time (it applies to the objects written afterwards), which is how a vault is extended."""
    from moto.s3.models import S3Backend

    original = S3Backend.put_object_lock_configuration
    if getattr(original, "lets_locked_buckets_change", False):
        return

    def put_object_lock_configuration(
        self: Any,
        bucket_name: str,
        lock_enabled: bool,
        mode: str | None = None,
        days: int | None = None,
        years: int | None = None,
    ) -> None:
        bucket = self.get_bucket(bucket_name)
        if bucket.object_lock_enabled and bucket.is_versioned:
            bucket.default_lock_mode = mode
            bucket.default_lock_days = days
            bucket.default_lock_years = years
            return
        original(self, bucket_name, lock_enabled, mode, days, years)

    put_object_lock_configuration.lets_locked_buckets_change = True  # type: ignore[attr-defined]
    S3Backend.put_object_lock_configuration = put_object_lock_configuration  # type: ignore[method-assign]


class _Server:
    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        _let_locked_buckets_change_their_retention()
        self.middleware = FaultyS3(DomainDispatcherApplication(create_backend_app))
        self._stack = ExitStack()
        self.url = self._stack.enter_context(serve_wsgi(self.middleware))
        self._session = requests.Session()
        self._session.trust_env = False

    def reset(self) -> None:
        self._session.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def close(self) -> None:
        self._session.close()
        self._stack.close()


_server: _Server | None = None
_server_lock = threading.Lock()


def _shared() -> _Server:
    global _server
    with _server_lock:
        if _server is None:
            _server = _Server()
            atexit.register(_server.close)
        return _server


@contextmanager
def moto_s3(plan: FaultPlan | None = None) -> Iterator[tuple[str, FaultPlan]]:
    """The local S3, emptied, with `plan` (a new one by default) deciding its faults; yields
    its endpoint URL (`http://127.0.0.1:<port>`) and the plan."""
    server = _shared()
    server.reset()
    plan = plan if plan is not None else FaultPlan()
    server.middleware.plan = plan
    try:
        yield server.url, plan
    finally:
        server.middleware.plan = FaultPlan()


# -- the cloud's side, for tests ------------------------------------------------------------------


def _backends() -> Iterator[tuple[Any, str, Any]]:
    """(backend, bucket name, bucket) of every bucket moto holds, whatever its account."""
    from moto.s3.models import s3_backends

    for name, (partition, account_id) in list(s3_backends.bucket_accounts.items()):
        backend = s3_backends[account_id][partition]
        bucket = backend.buckets.get(name)
        if bucket is not None:
            yield backend, name, bucket


def bucket_tags(name: str) -> dict[str, str] | None:
    """A bucket's tags, None when there is no such bucket."""
    for backend, bucket_name, bucket in _backends():
        if bucket_name == name:
            return dict(backend.tagger.get_tag_dict_for_resource(bucket.arn))
    return None


def buckets_with_token(token: str) -> list[str]:
    """Buckets tied to a token: tagged with it, or named after it (the broker's names; a
    bucket whose create was cut short before its tag still counts)."""
    return sorted(
        name
        for backend, name, bucket in _backends()
        if name == token
        or backend.tagger.get_tag_dict_for_resource(bucket.arn).get(ORDER_TAG) == token
    )


def count_buckets_with_token(token: str) -> int:
    return len(buckets_with_token(token))


def object_versions(name: str) -> list[dict[str, Any]]:
    """Every object version of a bucket: key, version id, retention mode and until when."""
    for _backend, bucket_name, bucket in _backends():
        if bucket_name == name:
            return [
                {
                    "key": version.name,
                    "version_id": version.version_id,
                    "lock_mode": version.lock_mode,
                    "lock_until": version.lock_until,
                }
                for _key, versions in bucket.keys.iterlists()
                for version in versions
            ]
    return []


def delete_bucket_out_of_band(name: str) -> None:
    """Delete a bucket behind the adapter's back, objects under retention included."""
    from moto.s3.models import s3_backends

    for backend, bucket_name, _bucket in _backends():
        if bucket_name == name:
            backend.buckets.pop(name, None)
            s3_backends.bucket_accounts.pop(name, None)


_boto3_session: boto3.session.Session | None = None


def s3_client(endpoint_url: str, region: str, key: AccessKey) -> Any:
    """A plain boto3 client, as the bucket's user would make one (from one boto3 session:
    a session parses the S3 model once, which a test should pay once)."""
    global _boto3_session
    if _boto3_session is None:
        _boto3_session = boto3.session.Session()
    return _boto3_session.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=key.key_id,
        aws_secret_access_key=key.secret,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


def put_object(bucket: Bucket, key: AccessKey, name: str) -> None:
    """Write an object into `bucket` with a key the adapter issued (boto3's defaults add the
    checksum S3 requires in a bucket with object lock)."""
    client = s3_client(bucket.endpoint, bucket.region or "us-east-1", key)
    client.put_object(Bucket=bucket.ref, Key=name, Body=f"contents of {name}".encode())


def fake_outscale_cloud(tmp_path: object) -> AbstractContextManager[dict[str, Any]]:
    """Settings and credentials of an `outscale` adapter on a fake Outscale API and this S3;
    see `tests.adapters.fake_outscale.fake_outscale_cloud`."""
    from tests.adapters.fake_outscale import fake_outscale_cloud as cloud

    return cloud(tmp_path)
