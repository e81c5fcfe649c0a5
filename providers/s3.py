"""Buckets on any S3-compatible object storage through boto3 (its botocore client): Outscale OOS,
and any other cloud whose object storage speaks S3 (OVHcloud, Scaleway, a Ceph RGW, …).

`S3ObjectStorage` is the `ObjectStorageDriver` of an adapter whose cloud has an S3 endpoint: the
adapter builds it with the endpoint, the region and its own key pair, and gives it a `KeyIssuer`
for the keys its users get (an identity service of that cloud: S3 itself has no way to make
keys). What the broker must control is taken back from boto3's defaults:

- one attempt per call (no SDK retries: the broker's backoff decides), the `HttpPolicy`'s
  timeout, no proxies from the environment, and unless the policy admits private addresses,
  every connection checked against it at connect time like the policy's own sessions do;
- nothing read from the environment or from `~/.aws` (a stray `AWS_PROFILE`, `AWS_CA_BUNDLE`
  or `AWS_ENDPOINT_URL` there would change where and how the broker calls);
- path-style addressing (no per-bucket host names to resolve) and checksums only where the S3
  API requires them (clouds other than AWS refuse the newer checksum headers).

Exactly once: the bucket's name is the order's token, so S3 itself deduplicates creates (a
second CreateBucket answers `BucketAlreadyOwnedByYou`, which is taken as "made by an earlier
attempt"); the token is written as the bucket's `broker-order` tag by the *last* step of a
create, after object lock, versioning and encryption are set, so `find_bucket` only finds
buckets that are completely made, and a create whose answer was lost is finished by the next.

Vaults: a bucket asked with `retention_days` is created with object lock and gets a default
retention in COMPLIANCE mode (S3 turns versioning on with it). `retained()` lists the object
versions and reads each one's retention (HeadObject, which S3-compatible stores answer with
`ObjectLockRetainUntilDate`); `delete_bucket` refuses while any is held, else deletes every
version and delete marker, then the bucket.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

import botocore.loaders
import botocore.session
from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from botocore.config import Config
from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    ParamValidationError,
    ReadTimeoutError,
)

from providers.base import (
    AccessKey,
    Bucket,
    BucketRequest,
    InstanceState,
    ObjectStorageDriver,
    OutcomeUnknown,
    Permanent,
    Retained,
    Retryable,
    SettingsInvalid,
    Throttled,
)
from providers.http import GuardedConnectionMixin, HttpPolicy, UnsafeEndpoint, parse_retry_after

log = logging.getLogger(__name__)

# The tag that ties a bucket to its broker order (written last by a create).
ORDER_TAG = "broker-order"
# When a throttling answer carries no usable Retry-After header.
DEFAULT_RETRY_AFTER = 5.0
# S3's page size for listings and its batch size for DeleteObjects.
PAGE_SIZE = 1000
# A runaway listing is a protocol error, not a reason to spin forever (a million versions).
MAX_PAGES = 1000

# What a bucket's key may do: its objects and their versions, nothing on the bucket itself
# (its policy, lock, lifecycle or deletion stay the broker's).
KEY_ACTIONS = (
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:ListBucketMultipartUploads",
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:GetObjectRetention",
    "s3:GetObjectTagging",
    "s3:PutObject",
    "s3:PutObjectTagging",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)

# S3 bucket names (the rules every S3-compatible store shares): 3-63 lowercase letters,
# digits, dots and hyphens, starting and ending with a letter or digit, not an IP address.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")

_THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded"}
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AuthorizationHeaderMalformed",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
        "AccountProblem",
    }
)
_QUOTA_CODES = frozenset({"TooManyBuckets", "QuotaExceeded"})
_ABSENT_BUCKET_CODES = frozenset({"NoSuchBucket", "404"})
_NO_LOCK_CODES = frozenset({"ObjectLockConfigurationNotFoundError"})
_NO_ENCRYPTION_CODES = frozenset({"ServerSideEncryptionConfigurationNotFoundError"})
_NO_TAGS_CODES = frozenset({"NoSuchTagSet", "NoSuchTagSetError"})
_NO_VERSION_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404"})
_LOCATION_CODES = frozenset({"InvalidLocationConstraint", "IllegalLocationConstraintException"})

# Every botocore setting that could come from the environment or a config file, with only its
# built-in default: the client is made from what the adapter is given and nothing else.
_ISOLATED_SESSION_VARIABLES = {
    name: (
        None,
        None,
        os.devnull if name in ("config_file", "credentials_file") else default,
        conversion,
    )
    for name, (_config, _env, default, conversion) in BOTOCORE_DEFAUT_SESSION_VARIABLES.items()
}


_loader_lock = threading.Lock()
_shared_loader: botocore.loaders.Loader | None = None


def _loader() -> botocore.loaders.Loader:
    """One loader of botocore's own service models for every client: parsing the S3 model
    costs about 100 ms, and adapters (so their clients) are built per unit of work. Only the
    models shipped with botocore: not `~/.aws/models`, nor `AWS_DATA_PATH`."""
    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = botocore.loaders.Loader(
                extra_search_paths=[botocore.loaders.Loader.BUILTIN_DATA_PATH],
                include_default_search_paths=False,
            )
        return _shared_loader


class KeyIssuer(Protocol):
    """How a cloud makes the keys that reach one bucket (S3 has no API for it)."""

    def principal(self, bucket: str) -> str | None:
        """Make sure the identity the bucket's keys belong to exists; the principal (an ARN)
        the bucket's policy must grant, or None when the cloud grants access itself."""

    def issue(self, bucket: str, token: str) -> AccessKey:
        """A new key of that identity, labelled `token`. A key an earlier call made for the
        same token (whose answer was lost, with its secret) is revoked first."""

    def revoke(self, bucket: str, key_id: str) -> None:
        """Revoke one key (already gone: done)."""

    def forget(self, bucket: str) -> None:
        """Revoke every key of a deleted bucket and remove its identity (already gone: done)."""


def valid_bucket_name(name: str) -> bool:
    return bool(_BUCKET_NAME.match(name)) and ".." not in name and not _IPV4.match(name)


class _GuardedAWSHTTPConnection(GuardedConnectionMixin, AWSHTTPConnection):
    pass


class _GuardedAWSHTTPSConnection(GuardedConnectionMixin, AWSHTTPSConnection):
    pass


class _GuardedAWSHTTPPool(AWSHTTPConnectionPool):
    ConnectionCls = _GuardedAWSHTTPConnection


class _GuardedAWSHTTPSPool(AWSHTTPSConnectionPool):
    ConnectionCls = _GuardedAWSHTTPSConnection


def _guard(client: Any) -> None:
    """Check every connection of a boto3 client against the endpoint policy at connect time
    (as `HttpPolicy.harden` does for requests sessions): a name that resolves to a private
    address later (DNS rebinding) is refused too."""
    pools = getattr(
        getattr(client._endpoint, "http_session", None), "_pool_classes_by_scheme", None
    )
    if not isinstance(pools, dict):  # a botocore that moved its pools: fail loudly, not open
        raise RuntimeError("Cannot guard this botocore's connections.")
    pools.update({"http": _GuardedAWSHTTPPool, "https": _GuardedAWSHTTPSPool})


class S3ObjectStorage(ObjectStorageDriver):
    """Buckets at one S3 endpoint, for one account (its access key / secret key)."""

    def __init__(
        self,
        *,
        endpoint: str,
        region: str,
        access_key: str,
        secret_key: str,
        http: HttpPolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        keys: KeyIssuer | None = None,
        object_lock: bool = True,
        scrub: Callable[[str], str] | None = None,
        endpoint_setting: str = "endpoint",
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.region = region
        self.http = http
        self.clock = clock
        self.keys = keys
        self.object_lock = object_lock
        self.endpoint_setting = endpoint_setting
        self._access_key, self._secret_key = access_key, secret_key
        self._scrub_with = scrub
        self._client: Any = None

    def __repr__(self) -> str:
        return f"S3ObjectStorage(endpoint={self.endpoint!r}, region={self.region!r})"

    # -- the contract -----------------------------------------------------------------------

    def create_bucket(self, request: BucketRequest, idempotency_token: str) -> Bucket:
        name = request.name
        if not valid_bucket_name(name):
            raise Permanent(f"{name!r} is not a valid bucket name.", code="invalid_request")
        if request.region and not (
            request.region == self.region
            or re.fullmatch(re.escape(self.region) + "[a-z]", request.region)
        ):
            # The endpoint serves one region: a bucket elsewhere would break the order's
            # residency promise.
            raise Permanent(
                f"This object storage serves {self.region}, not {request.region}.",
                code="invalid_request",
            )
        days = request.retention_days
        if days is not None:
            if not self.object_lock:
                raise Permanent(
                    "This object storage has no object lock: it cannot keep a retention.",
                    code="unsupported",
                )
            if days < 1:
                raise Permanent("A retention is at least one day.", code="invalid_request")
        existed = self._make_bucket(name, locked=days is not None)
        # The rest is idempotent: a create whose answer was lost is finished by the next (one
        # that finds a longer retention, set since, leaves it: it is never shortened).
        if days is not None and not (existed and (self._lock(name)[1] or 0) >= days):
            self._put_retention(name, days, creating=True)
        elif request.versioning:
            self._call(
                "PutBucketVersioning",
                creating=True,
                Bucket=name,
                VersioningConfiguration={"Status": "Enabled"},
            )
        if request.encrypted:
            self._call(
                "PutBucketEncryption",
                creating=True,
                Bucket=name,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )
        tags = {ORDER_TAG: idempotency_token}
        self._call(
            "PutBucketTagging",
            creating=True,
            Bucket=name,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )
        try:
            return self._describe(name, tags)
        except Retryable:
            # Made and tagged: a failed read-back must not make the broker create it again.
            return Bucket(
                ref=name,
                state=InstanceState.RUNNING,
                endpoint=self.endpoint,
                token=idempotency_token,
                region=self.region,
                encrypted=request.encrypted,
                versioning=request.versioning or days is not None,
                retention_days=days,
            )

    def get_bucket(self, ref: str) -> Bucket | None:
        if not valid_bucket_name(ref):
            return None
        try:
            self._call("HeadBucket", Bucket=ref)
            return self._describe(ref)
        except Permanent as error:
            if error.code == "not_found":
                return None
            raise

    def find_bucket(self, token: str) -> Bucket | None:
        # The broker names a bucket by its order's token: the bucket of a token is the one of
        # that name, once its create finished (the tag is its last step).
        if not valid_bucket_name(token):
            return None
        try:
            tags = self._tags(token)
            if tags.get(ORDER_TAG) != token:
                return None
            return self._describe(token, tags)
        except Permanent as error:
            if error.code == "not_found":
                return None
            raise

    def set_retention(self, ref: str, days: int) -> Bucket:
        if days < 1:
            raise Permanent("A retention is at least one day.", code="invalid_request")
        enabled, current = self._lock(ref)
        if not enabled:
            raise Permanent(
                f"Bucket {ref} was created without object lock: it cannot take a retention.",
                code="unsupported",
            )
        if current is not None and days < current:
            raise Permanent(
                f"Bucket {ref} keeps objects {current} days; a retention is never shortened.",
                code="retention_shortened",
            )
        if current != days:
            self._put_retention(ref, days)
        try:
            return self._describe(ref)
        except Retryable:
            return Bucket(
                ref=ref,
                state=InstanceState.RUNNING,
                endpoint=self.endpoint,
                region=self.region,
                versioning=True,
                retention_days=days,
            )

    def retained(self, ref: str) -> Retained:
        pages = self._versions(ref)
        first = next(pages, None)
        if first is None or not (first.get("Versions") or []):
            return Retained(0)
        enabled, _days = self._lock(ref)
        if not enabled:
            return Retained(0)
        now = self.clock()
        count, until = 0, None
        for page in _chain(first, pages):
            for version in page.get("Versions") or []:
                held_until = self._held_until(ref, version, now)
                if held_until is None:
                    continue
                count += 1
                if held_until is not datetime.max and (until is None or held_until > until):
                    until = held_until
        return Retained(count, until)

    def delete_bucket(self, ref: str) -> None:
        if not valid_bucket_name(ref):
            return
        try:
            held = self.retained(ref)
        except Permanent as error:
            if error.code != "not_found":
                raise
            self._forget_keys(ref)
            return
        if held.objects:
            until = f" until {held.until:%Y-%m-%d %H:%M} UTC" if held.until else ""
            raise Permanent(
                f"Bucket {ref} holds {held.objects} object(s) under retention{until}: "
                "it cannot be deleted before.",
                code="under_retention",
            )
        try:
            self._empty(ref)
            self._call("DeleteBucket", Bucket=ref)
        except Permanent as error:
            if error.code != "not_found":
                raise
        self._forget_keys(ref)

    def issue_key(self, ref: str, token: str) -> AccessKey:
        keys = self._key_issuer()
        principal = keys.principal(ref)
        if principal is not None:
            self._grant(ref, principal)
        return keys.issue(ref, token)

    def revoke_key(self, ref: str, key_id: str) -> None:
        self._key_issuer().revoke(ref, key_id)

    # -- steps ----------------------------------------------------------------------------------

    def _make_bucket(self, name: str, *, locked: bool) -> bool:
        """Create the bucket; whether an earlier attempt had made it already."""
        params: dict[str, Any] = {"Bucket": name}
        if locked:
            params["ObjectLockEnabledForBucket"] = True
        if self.region and self.region != "us-east-1":
            # What `aws s3 mb` sends; a store that knows no locations refuses it, and is then
            # asked again without.
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._call("CreateBucket", creating=True, **params)
        except _AlreadyMine:
            return True  # an earlier attempt made it: this one finishes it
        except _WrongLocation:
            params.pop("CreateBucketConfiguration")
            try:
                self._call("CreateBucket", creating=True, **params)
            except _AlreadyMine:
                return True
        return False

    def _put_retention(self, name: str, days: int, *, creating: bool = False) -> None:
        self._call(
            "PutObjectLockConfiguration",
            creating=creating,
            Bucket=name,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": days}},
            },
        )

    def _describe(self, name: str, tags: Mapping[str, str] | None = None) -> Bucket:
        versioning = self._call("GetBucketVersioning", Bucket=name).get("Status") == "Enabled"
        locked, days = self._lock(name)
        try:
            rules = self._call("GetBucketEncryption", Bucket=name)
            encrypted = bool(
                (rules.get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
            )
        except _Missing:
            encrypted = False
        if tags is None:
            tags = self._tags(name)
        return Bucket(
            ref=name,
            state=InstanceState.RUNNING,
            endpoint=self.endpoint,
            token=tags.get(ORDER_TAG),
            region=self.region,
            encrypted=encrypted,
            versioning=versioning,
            retention_days=days,
            extra={"object_lock": locked, "tags": dict(tags)},
        )

    def _lock(self, name: str) -> tuple[bool, int | None]:
        """Whether the bucket has object lock, and its default retention in days."""
        try:
            answer = self._call("GetObjectLockConfiguration", Bucket=name)
        except _Missing:
            return False, None
        config = answer.get("ObjectLockConfiguration") or {}
        if config.get("ObjectLockEnabled") != "Enabled":
            return False, None
        retention = (config.get("Rule") or {}).get("DefaultRetention") or {}
        days = int(retention.get("Days") or 0) or 365 * int(retention.get("Years") or 0)
        return True, (days or None)

    def _tags(self, name: str) -> dict[str, str]:
        try:
            answer = self._call("GetBucketTagging", Bucket=name)
        except _Missing:
            return {}
        return {
            str(tag.get("Key")): str(tag.get("Value", ""))
            for tag in answer.get("TagSet") or []
            if isinstance(tag, dict)
        }

    def _versions(self, name: str) -> Iterator[dict[str, Any]]:
        """Pages of ListObjectVersions."""
        params: dict[str, Any] = {"Bucket": name, "MaxKeys": PAGE_SIZE}
        for _ in range(MAX_PAGES):
            page = self._call("ListObjectVersions", **params)
            yield page
            if not page.get("IsTruncated"):
                return
            params = {
                "Bucket": name,
                "MaxKeys": PAGE_SIZE,
                "KeyMarker": page.get("NextKeyMarker", ""),
                "VersionIdMarker": page.get("NextVersionIdMarker", ""),
            }
        raise Retryable(f"S3 ListObjectVersions of {name} kept answering with more pages.")

    def _held_until(self, bucket: str, version: Mapping[str, Any], now: datetime) -> Any:
        """Until when a version is held (`datetime.max` for a legal hold), or None if free."""
        try:
            head = self._call(
                "HeadObject",
                Bucket=bucket,
                Key=version.get("Key", ""),
                VersionId=version.get("VersionId") or "null",
            )
        except _Missing:
            return None  # deleted meanwhile
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return datetime.max
        until = head.get("ObjectLockRetainUntilDate")
        if head.get("ObjectLockMode") and isinstance(until, datetime):
            until = until if until.tzinfo else until.replace(tzinfo=UTC)
            if until > now:
                return until.astimezone(UTC)
        return None

    def _empty(self, name: str) -> None:
        """Delete every object version and delete marker."""
        for page in self._versions(name):
            entries = [
                {"Key": item.get("Key", ""), "VersionId": item.get("VersionId") or "null"}
                for field in ("Versions", "DeleteMarkers")
                for item in page.get(field) or []
            ]
            for start in range(0, len(entries), PAGE_SIZE):
                answer = self._call(
                    "DeleteObjects",
                    Bucket=name,
                    Delete={"Objects": entries[start : start + PAGE_SIZE], "Quiet": True},
                )
                errors = [e for e in answer.get("Errors") or [] if isinstance(e, dict)]
                if any(e.get("Code") == "AccessDenied" for e in errors):
                    raise Permanent(
                        f"Bucket {name} holds objects under retention: it cannot be deleted.",
                        code="under_retention",
                    )
                if errors:
                    raise Retryable(
                        f"S3 DeleteObjects left {len(errors)} object(s) in {name} "
                        f"({errors[0].get('Code')})."
                    )

    def _grant(self, name: str, principal: str) -> None:
        """The bucket's policy: its keys' identity may use its objects (and nothing else)."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "BrokerBucketKeys",
                    "Effect": "Allow",
                    "Principal": {"AWS": [principal]},
                    "Action": list(KEY_ACTIONS),
                    "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
                }
            ],
        }
        self._call("PutBucketPolicy", Bucket=name, Policy=json.dumps(policy))

    def _key_issuer(self) -> KeyIssuer:
        if self.keys is None:
            raise Permanent("This object storage cannot issue keys here.", code="unsupported")
        return self.keys

    def _forget_keys(self, name: str) -> None:
        if self.keys is not None:
            self.keys.forget(name)

    # -- transport and error mapping --------------------------------------------------------

    def _s3(self) -> Any:
        """The S3 client, made on first use (building a driver stays free of I/O). boto3's
        clients are botocore's; its `Session` is skipped as it would add boto3's resource
        models to the shared loader's search paths each time."""
        if self._client is None:
            session = botocore.session.Session(session_vars=_ISOLATED_SESSION_VARIABLES)
            session.register_component("data_loader", _loader())
            config = Config(
                connect_timeout=self.http.timeout,
                read_timeout=self.http.timeout,
                retries={"mode": "standard", "total_max_attempts": 1},
                proxies={},  # an empty map: none from the environment either
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                ignore_configured_endpoint_urls=True,
                use_fips_endpoint=False,
                use_dualstack_endpoint=False,
            )
            client = session.create_client(
                "s3",
                region_name=self.region or "us-east-1",
                endpoint_url=self.endpoint,
                aws_access_key_id=self._access_key,
                aws_secret_access_key=self._secret_key,
                config=config,
            )
            if not self.http.allow_private:
                _guard(client)
            self._client = client
        return self._client

    def _scrub(self, text: str) -> str:
        if self._scrub_with is not None:
            return self._scrub_with(text)
        for value in (self._access_key, self._secret_key):
            if value:
                text = text.replace(value, "***")
        return text

    def _call(self, action: str, *, creating: bool = False, **params: Any) -> dict[str, Any]:
        """One S3 call; every failure leaves as a typed `ProviderError` (or one of the private
        answers the steps above handle: `_Missing`, `_AlreadyMine`, `_WrongLocation`)."""
        transient = OutcomeUnknown if creating else Retryable
        method = re.sub(r"(?<!^)([A-Z])", r"_\1", action).lower()
        try:
            answer = getattr(self._s3(), method)(**params)
        except ClientError as error:
            self._raise_client_error(action, error, transient)
        except (ReadTimeoutError, ConnectTimeoutError):
            raise transient(f"S3 {action} timed out.") from None
        except HTTPClientError as error:
            cause = error.kwargs.get("error")
            if isinstance(cause, UnsafeEndpoint):
                raise SettingsInvalid(
                    self._scrub(f"Endpoint refused: {cause}"), self.endpoint_setting
                ) from None
            raise transient(self._scrub(f"S3 {action} failed: {type(cause).__name__}.")) from None
        except ParamValidationError as error:
            raise Permanent(
                self._scrub(f"S3 {action}: {error}")[:300], code="invalid_request"
            ) from None
        except BotoCoreError as error:
            raise transient(self._scrub(f"S3 {action} failed: {error}")[:300]) from None
        except UnsafeEndpoint as error:
            raise SettingsInvalid(
                self._scrub(f"Endpoint refused: {error}"), self.endpoint_setting
            ) from None
        if not isinstance(answer, dict):
            raise transient(f"S3 {action} answered with something other than an object.")
        return answer

    def _raise_client_error(
        self, action: str, error: ClientError, transient: type[Retryable]
    ) -> NoReturn:
        response: Mapping[str, Any] = error.response or {}
        meta = response.get("ResponseMetadata") or {}
        status = int(meta.get("HTTPStatusCode") or 0)
        details = response.get("Error") or {}
        code = str(details.get("Code") or status)
        message = str(details.get("Message") or "")[:200]
        described = self._scrub(
            f"S3 {action} answered HTTP {status}: {code}"
            + (f" ({message})" if message else "")
            + "."
        )
        headers = meta.get("HTTPHeaders") or {}
        # A 503 that says when to come back is S3's way of throttling (SlowDown), also on HEAD
        # requests, whose answers have no body to carry the code.
        if status == 429 or code in _THROTTLE_CODES or (status == 503 and "retry-after" in headers):
            raise Throttled(
                described,
                retry_after=parse_retry_after(headers.get("retry-after"), DEFAULT_RETRY_AFTER),
            ) from None
        if code in ("BucketAlreadyOwnedByYou",) and action == "CreateBucket":
            raise _AlreadyMine(described) from None
        if code in _LOCATION_CODES and action == "CreateBucket":
            raise _WrongLocation(described) from None
        if code in _ABSENT_BUCKET_CODES and not (code == "404" and action == "HeadObject"):
            raise Permanent(described, code="not_found") from None
        if (
            code in _NO_LOCK_CODES
            or code in _NO_ENCRYPTION_CODES
            or code in _NO_TAGS_CODES
            or (action == "HeadObject" and code in _NO_VERSION_CODES)
            or (action == "GetBucketEncryption" and status == 501)
        ):
            raise _Missing(described) from None
        if status in (401, 403) or code in _AUTH_CODES:
            raise Permanent(described, code="unauthorized") from None
        if code in _QUOTA_CODES:
            raise Permanent(described, code="quota_exceeded") from None
        if code == "BucketAlreadyExists":
            raise Permanent(
                described + " The name belongs to another account.", code="conflict"
            ) from None
        if code == "InvalidBucketState":
            raise Permanent(described, code="conflict") from None
        if status == 501 or code == "NotImplemented":
            raise Permanent(described, code="unsupported") from None
        if 400 <= status < 500 and status != 408:
            raise Permanent(described, code="invalid_request") from None
        raise transient(described) from None


class _Missing(Permanent):
    """A configuration or object that does not exist (no lock, no tags, no such version)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="not_found")


class _AlreadyMine(Permanent):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="conflict")


class _WrongLocation(Permanent):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_request")


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
