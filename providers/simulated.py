"""`simulated`: an in-process cloud for the demo consortium and the reliability tests.

It behaves like a remote cloud where it matters to the broker: creates take time
(`provision_delay_seconds`), instances carry the order token, quotas run out, and a fault plan
makes calls time out (before or after doing the work), fail with 5xx or 429, or find their
instance deleted out of band. Its state lives in a SQLite database of its own under the
adapter's state directory (`simulated-<provider id>.sqlite3`), so the API process and every
worker process see the same cloud and its VMs survive a restart. It is deterministic: ids come
from a counter and random faults from the plan's seeded generator (only access key secrets are
random).

The store: a table per kind of record (instances, volumes, buckets, access keys), each record
the JSON document the adapter reads and changes as a dict, beside copies of the fields it is
found by (token, state, attachment, bucket) in indexed columns; one row holds the id counter and
the fault plan's queued faults and call counts. Every call is one `BEGIN IMMEDIATE` transaction
(calls of all processes are serialized, as they were under the JSON file's lock) that reads
only the records it needs, so a call costs the same at 50 instances or 10,000 (a usage poll
reads them all). It commits even when the call fails (a fault is consumed; a timeout after
commit did its work), and a process killed mid-call commits nothing: the WAL journal keeps the
database whole. A JSON state file of the store this one replaced (`simulated-<id>.json`, next
to the database) is imported when the database is created.

It also sells block volumes and buckets (the adapter is its own `VolumeDriver` and
`ObjectStorageDriver`), kept in the same database and failing with the same fault plan: a
volume or bucket create draws the `provision` faults, get `get`, find `find_by_token`, delete
`deprovision`, and resize, attach, detach, set_retention, retained, issue_key and revoke_key
draw the `action` faults. Volumes are `pending` for `provision_delay_seconds` like machines,
attach to a live machine of the same region, only grow, and are not deleted while attached.
Buckets are named by the request (S3 naming rules), may have a default retention in
compliance mode (never shortened), and are not deleted while an object is younger than the
retention; the objects are written from the cloud side (`SimulatedCloud.put_object`), as a
bucket's user would.

Settings (all optional):
    seed                     int, seeds the random faults
    provision_delay_seconds  number, time an instance or a volume stays `pending`
    max_instances            int, quota of live instances (a create beyond it is refused)
    max_volumes              int, quota of live volumes
    flavors                  [{sku, name, vcpu, ram_gib, disk_gib, gpu?, region?}]
    volume_types             [{sku, name?, iops?, region?}] (default: one type, `sim-ssd`)
    object_storage_endpoint  URL, the endpoint buckets report to their users
                             (default https://objects.simulated.example; never called)
    faults                   {rates: {operation: {fault: probability}}, retry_after_seconds,
                              queued: {operation: [fault, …]}}
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from providers.base import (
    AccessKey,
    Action,
    Bucket,
    BucketRequest,
    Feature,
    Instance,
    InstanceState,
    ObjectStorageDriver,
    OfferSpec,
    OutcomeUnknown,
    Permanent,
    ProviderAdapter,
    ProvisionRequest,
    Retained,
    Retryable,
    SettingsInvalid,
    Throttled,
    UsageSample,
    Volume,
    VolumeDriver,
    VolumeRequest,
)
from providers.faults import Fault, FaultPlan, Operation
from providers.http import HttpPolicy

DEFAULT_FLAVORS: tuple[dict[str, Any], ...] = (
    {"sku": "sim-small", "name": "Simulated small", "vcpu": 1, "ram_gib": "2", "disk_gib": 20},
    {"sku": "sim-medium", "name": "Simulated medium", "vcpu": 2, "ram_gib": "4", "disk_gib": 40},
    {"sku": "sim-large", "name": "Simulated large", "vcpu": 4, "ram_gib": "16", "disk_gib": 80},
)

DEFAULT_VOLUME_TYPES: tuple[dict[str, Any], ...] = ({"sku": "sim-ssd", "name": "Simulated SSD"},)
DEFAULT_OBJECT_STORAGE_ENDPOINT = "https://objects.simulated.example"

# Metrics the simulated cloud reports, per running instance-hour.
USAGE_METRICS = ("vcpu_hour", "ram_gib_hour")

# S3's bucket naming rules (the broker's `broker-order-<uuid>-<n>` follows them).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

T = TypeVar("T")


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _flavor(raw: Any, index: int) -> OfferSpec:
    if not isinstance(raw, Mapping):
        raise SettingsInvalid(f"flavors[{index}] must be an object.", "flavors")
    try:
        return OfferSpec(
            sku=str(raw["sku"]),
            name=str(raw.get("name", raw["sku"])),
            vcpu=int(raw["vcpu"]),
            ram_gib=Decimal(str(raw["ram_gib"])),
            disk_gib=int(raw["disk_gib"]),
            gpu=int(raw.get("gpu", 0)),
            region=str(raw["region"]) if raw.get("region") is not None else None,
        )
    except (KeyError, TypeError, ValueError, InvalidOperation) as error:
        raise SettingsInvalid(
            f"flavors[{index}] is incomplete or malformed: {error}.", "flavors"
        ) from None


@dataclass(frozen=True)
class _VolumeType:
    sku: str
    name: str
    iops: int | None = None
    region: str | None = None


def _volume_type(raw: Any, index: int) -> _VolumeType:
    if not isinstance(raw, Mapping):
        raise SettingsInvalid(f"volume_types[{index}] must be an object.", "volume_types")
    try:
        iops = raw.get("iops")
        if iops is not None and (not isinstance(iops, int) or isinstance(iops, bool) or iops < 1):
            raise ValueError("iops must be a positive integer")
        return _VolumeType(
            sku=str(raw["sku"]),
            name=str(raw.get("name", raw["sku"])),
            iops=iops,
            region=str(raw["region"]) if raw.get("region") is not None else None,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise SettingsInvalid(
            f"volume_types[{index}] is incomplete or malformed: {error}.", "volume_types"
        ) from None


# The store: one SQLite database per provider ---------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """A kind of record the cloud keeps: its table, the field naming a record, and the fields
    the cloud finds records by (copied into indexed columns beside the record's JSON)."""

    table: str
    key: str
    lookups: tuple[str, ...]


_INSTANCES = _Kind("instances", "ref", ("token", "state"))
_VOLUMES = _Kind("volumes", "ref", ("token", "state", "attached_to"))
_BUCKETS = _Kind("buckets", "name", ("token",))
_KEYS = _Kind("keys", "key_id", ("bucket", "token"))  # access keys
_KINDS = (_INSTANCES, _VOLUMES, _BUCKETS, _KEYS)

_SCHEMA = (
    # One row: the id counter, and the fault plan's queued faults and call counts (JSON).
    "CREATE TABLE IF NOT EXISTS cloud"
    " (id INTEGER PRIMARY KEY CHECK (id = 1), counter INTEGER NOT NULL, plan TEXT NOT NULL)",
    *(
        f"CREATE TABLE IF NOT EXISTS {kind.table} (ref TEXT PRIMARY KEY, "
        + "".join(f"{column} TEXT, " for column in kind.lookups)
        + "record TEXT NOT NULL)"
        for kind in _KINDS
    ),
    *(
        f"CREATE INDEX IF NOT EXISTS {kind.table}_by_{column} ON {kind.table} ({column})"
        for kind in _KINDS
        for column in kind.lookups
    ),
)

# How long a call waits for another process's call (a usage poll of a large fleet is the
# longest); the JSON file's lock waited forever.
BUSY_TIMEOUT_S = 60.0
# Databases a thread keeps open (one per simulated provider it served lately).
OPEN_PER_THREAD = 16


@dataclass
class _Entry:
    record: dict[str, Any] | None  # None: no such record (any more)
    stored: str | None  # its JSON as the database holds it (None: not there)


class _Records:
    """The records of one kind, within one call's transaction.

    Records are the dicts the adapter reads and changes in place, as when the whole cloud was
    one JSON document. A record the call reads is loaded once and kept here (two reads give
    the same dict); `flush` writes back what changed, before every query (so that a query
    sees the call's own changes) and at the end of the call.
    """

    def __init__(self, connection: sqlite3.Connection, kind: _Kind) -> None:
        self._db = connection
        self._kind = kind
        self._read: dict[str, _Entry] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._read.get(key)
        if entry is None:
            row = self._db.execute(
                f"SELECT record FROM {self._kind.table} WHERE ref = ?", (key,)
            ).fetchone()
            stored = None if row is None else str(row[0])
            entry = self._read[key] = _Entry(None if stored is None else json.loads(stored), stored)
        return entry.record

    def __setitem__(self, key: str, record: dict[str, Any]) -> None:
        self.get(key)
        self._read[key].record = record

    def pop(self, key: str) -> dict[str, Any] | None:
        record = self.get(key)
        self._read[key].record = None
        return record

    def where(self, **lookups: str) -> list[dict[str, Any]]:
        """The records whose fields have these values (indexed fields only), oldest first."""
        assert lookups and set(lookups) <= set(self._kind.lookups), lookups
        condition = " AND ".join(f"{column} = ?" for column in lookups)
        return [record for _, record in self._select(f"WHERE {condition}", tuple(lookups.values()))]

    def values(self) -> list[dict[str, Any]]:
        """Every record, oldest first."""
        return list(self.all().values())

    def all(self) -> dict[str, dict[str, Any]]:
        """Every record by id, oldest first."""
        return dict(self._select("", ()))

    def count_live(self) -> int:
        """How many records are not `deleted` (for the quotas)."""
        self.flush()
        row = self._db.execute(
            f"SELECT count(*) FROM {self._kind.table} WHERE state != ?",
            (InstanceState.DELETED.value,),
        ).fetchone()
        return int(row[0])

    def _select(self, where: str, values: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
        self.flush()
        rows = self._db.execute(
            f"SELECT ref, record FROM {self._kind.table} {where} ORDER BY rowid", values
        )
        records = []
        for key, stored in rows:
            entry = self._read.get(key)
            if entry is None:  # (after the flush, a record read before is what the row holds)
                entry = self._read[key] = _Entry(json.loads(stored), stored)
            assert entry.record is not None
            records.append((key, entry.record))
        return records

    def flush(self) -> None:
        """Write the records this call added, changed or removed."""
        table, lookups = self._kind.table, self._kind.lookups
        for key, entry in self._read.items():
            text = None if entry.record is None else json.dumps(entry.record)
            if text == entry.stored:
                continue
            if entry.record is None:
                self._db.execute(f"DELETE FROM {table} WHERE ref = ?", (key,))
            else:
                # An upsert keeps the row's rowid, hence the records' order.
                self._db.execute(
                    f"INSERT INTO {table} (ref, {', '.join(lookups)}, record)"
                    f" VALUES (?, {'?, ' * len(lookups)}?) ON CONFLICT (ref) DO UPDATE SET "
                    + ", ".join(f"{column} = excluded.{column}" for column in (*lookups, "record")),
                    (key, *(entry.record.get(field) for field in lookups), text),
                )
            entry.stored = text


class _State:
    """What the simulated cloud knows, as one call sees it (inside its transaction)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        counter, plan = connection.execute("SELECT counter, plan FROM cloud").fetchone()
        self._stored: tuple[int, str] = (counter, plan)
        self.counter: int = counter
        self.plan: dict[str, Any] = json.loads(plan)
        self.instances = _Records(connection, _INSTANCES)
        self.volumes = _Records(connection, _VOLUMES)
        self.buckets = _Records(connection, _BUCKETS)  # by name
        self.keys = _Records(connection, _KEYS)  # by key id

    def save(self) -> None:
        for records in (self.instances, self.volumes, self.buckets, self.keys):
            records.flush()
        if (self.counter, plan := json.dumps(self.plan)) != self._stored:
            self._db.execute("UPDATE cloud SET counter = ?, plan = ?", (self.counter, plan))
            self._stored = (self.counter, plan)

    def detach_from(self, instance_ref: str) -> None:
        """A machine that goes takes its attachments with it."""
        for volume in self.volumes.where(attached_to=instance_ref):
            volume["attached_to"] = None


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """A write transaction, begun with the write lock taken (two calls never interleave),
    committed even when the call fails: a fault is consumed, and a timeout after commit has
    done its work (the caller just never hears of it). Only a failure of the store itself, or
    the process dying, leaves nothing behind."""
    connection.execute("BEGIN IMMEDIATE")
    store_failed = False
    try:
        yield
    except sqlite3.Error:
        store_failed = True
        raise
    finally:
        try:
            if not store_failed:
                connection.execute("COMMIT")
        finally:
            if connection.in_transaction:
                connection.rollback()


def _open(path: Path) -> sqlite3.Connection:
    """A connection to the provider's database, created (or imported from its JSON state
    file, next to it) if new."""
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    # WAL: a commit appends to the log and is durable once the log is synced at a checkpoint;
    # a process killed mid-call leaves its transaction out, never a torn database.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    with _transaction(connection):
        for statement in _SCHEMA:
            connection.execute(statement)
        created = connection.execute(
            "INSERT OR IGNORE INTO cloud (id, counter, plan) VALUES (1, 0, '{}')"
        ).rowcount
        legacy = path.with_suffix(".json")
        if created and legacy.exists():
            _import(connection, json.loads(legacy.read_text()))
    return connection


def _import(connection: sqlite3.Connection, data: Mapping[str, Any]) -> None:
    """A state file of the JSON store this one replaced: `counter`, `plan` and records by id
    (files from before the cloud sold storage have no volumes, buckets or keys)."""
    state = _State(connection)
    state.counter = data["counter"]
    state.plan = data.get("plan", {})
    for kind in _KINDS:
        records: _Records = getattr(state, kind.table)
        for key, record in data.get(kind.table, {}).items():
            records[key] = record
    state.save()


class _Connections(threading.local):
    """This thread's open databases, most recently used last.

    Opening a database costs more than a call (and closing the last connection to it
    checkpoints and syncs the log), so each thread keeps its connections. A connection is
    never used in a process forked after it was opened (SQLite forbids it): the child opens
    its own. A database file replaced or removed under its path is opened again."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.open: OrderedDict[Path, tuple[sqlite3.Connection, tuple[int, int]]] = OrderedDict()


_connections = _Connections()
# Connections inherited across a fork: kept, unused, so that the child never closes them.
_inherited: list[object] = []


def _connection(path: Path) -> sqlite3.Connection:
    """This thread's connection to the database at `path`."""
    cache = _connections
    if cache.pid != os.getpid():
        _inherited.append(cache.open)
        cache.pid, cache.open = os.getpid(), OrderedDict()
    try:
        stat = path.stat()
        file: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
    except FileNotFoundError:
        file = None
    found = cache.open.pop(path, None)
    if found is not None and found[1] == file:
        cache.open[path] = found
        return found[0]
    if found is not None:
        found[0].close()
    connection = _open(path)
    stat = path.stat()
    cache.open[path] = (connection, (stat.st_dev, stat.st_ino))
    if len(cache.open) > OPEN_PER_THREAD:
        cache.open.popitem(last=False)[1][0].close()
    return connection


class SimulatedCloud:
    """The cloud side: the provider's database and the fault plan kept in it.

    Tests hold one to inject faults or delete instances behind the adapter's back; the
    adapter holds one to serve its calls. `path` names the database; its suffix is replaced
    by `.sqlite3`, so the name of the JSON state file it replaced finds it as well.
    """

    def __init__(
        self,
        path: Path,
        *,
        seed: int = 0,
        faults: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.path = path.with_suffix(".sqlite3")
        self._plan_settings = dict(faults or {})
        self._seed = seed
        self._clock = clock or (lambda: datetime.now(UTC))
        # What a 429 asks to wait (the fault plan's `retry_after_seconds`).
        self.retry_after_seconds = int(self._plan_settings.get("retry_after_seconds", 2))
        path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[_State]:
        connection = _connection(self.path)
        with _transaction(connection):
            state = _State(connection)
            try:
                yield state
            finally:
                state.save()

    def _plan(self, state: _State) -> FaultPlan:
        """The configured rates, plus the queued faults and call counts kept as cloud state."""
        return FaultPlan.from_dict({"seed": self._seed, **self._plan_settings, **state.plan})

    def call(self, operation: Operation, work: Callable[[_State, Fault | None], T]) -> T:
        """Run `work` under the lock with the fault drawn for this call."""
        with self._locked() as state:
            plan = self._plan(state)
            fault = plan.next(operation)
            saved = plan.to_dict()
            state.plan = {"queued": saved["queued"], "calls": saved["calls"]}
            return work(state, fault)

    # What tests (and the demo) use from the outside ------------------------------------

    def inject(self, operation: str, *faults: str) -> None:
        """The next calls of `operation` fail with `faults`, in order (even across restarts)."""
        names = [Fault(fault).value for fault in faults]
        with self._locked() as state:
            queued = state.plan.setdefault("queued", {})
            queued.setdefault(Operation(operation).value, []).extend(names)

    def delete(self, ref: str) -> None:
        with self._locked() as state:
            state.instances.pop(ref)
            state.detach_from(ref)

    def instances(self) -> dict[str, dict[str, Any]]:
        with self._locked() as state:
            return state.instances.all()

    def delete_volume(self, ref: str) -> None:
        """Delete a volume behind the adapter's back (attached or not)."""
        with self._locked() as state:
            state.volumes.pop(ref)

    def volumes(self) -> dict[str, dict[str, Any]]:
        """Every volume by ref, deleted ones included (as `deleted`)."""
        with self._locked() as state:
            return state.volumes.all()

    def buckets(self) -> dict[str, dict[str, Any]]:
        """Every live bucket by name, with its `objects` ({key: written at, ISO 8601})."""
        with self._locked() as state:
            return state.buckets.all()

    def keys(self) -> dict[str, dict[str, Any]]:
        """Every access key by id (`bucket`, `token`, `secret`, `revoked`)."""
        with self._locked() as state:
            return state.keys.all()

    def put_object(
        self,
        bucket_ref: str,
        key: str,
        at: datetime | None = None,
        *,
        access_key_id: str | None = None,
        size_bytes: int = 0,
    ) -> None:
        """Write object `key` (`size_bytes` long) into the bucket at `at` (default: now), as
        its user would; with `access_key_id`, only if that key is live and reaches the bucket.
        Writing a key again makes a newer version: the object is then held from the later
        write, and the bucket stores both versions."""
        with self._locked() as state:
            bucket = state.buckets.get(bucket_ref)
            if bucket is None:
                raise Permanent(f"No bucket {bucket_ref}.", code="not_found")
            if access_key_id is not None:
                access = state.keys.get(access_key_id)
                if access is None or access["revoked"] or access["bucket"] != bucket_ref:
                    raise Permanent("Access denied.", code="unauthorized")
            written = _iso(at or self._clock())
            bucket["objects"][key] = written
            bucket.setdefault("stored", []).append([written, size_bytes])


class SimulatedAdapter(ProviderAdapter, VolumeDriver, ObjectStorageDriver):
    name = "simulated"
    features = frozenset(
        {
            Feature.STOP_START,
            Feature.REBOOT,
            Feature.USAGE,
            Feature.VOLUMES,
            Feature.OBJECT_STORAGE,
            Feature.OBJECT_LOCK,
        }
    )
    settings_fields = frozenset(
        {
            "seed",
            "provision_delay_seconds",
            "max_instances",
            "max_volumes",
            "flavors",
            "volume_types",
            "object_storage_endpoint",
            "faults",
        }
    )

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], http: HttpPolicy) -> dict[str, Any]:
        cleaned = super().check_settings(settings, http)
        for index, raw in enumerate(cleaned.get("flavors", [])):
            _flavor(raw, index)
        if not isinstance(cleaned.get("flavors", []), list):
            raise SettingsInvalid("flavors must be a list.", "flavors")
        if not isinstance(cleaned.get("volume_types", []), list):
            raise SettingsInvalid("volume_types must be a list.", "volume_types")
        for index, raw in enumerate(cleaned.get("volume_types", [])):
            _volume_type(raw, index)
        endpoint = cleaned.get("object_storage_endpoint", DEFAULT_OBJECT_STORAGE_ENDPOINT)
        if not isinstance(endpoint, str) or not re.match(r"https?://[^/\s]+", endpoint):
            raise SettingsInvalid(
                "object_storage_endpoint must be an http(s) URL.", "object_storage_endpoint"
            )
        for name in ("seed", "max_instances", "max_volumes"):
            if name in cleaned and not (
                isinstance(cleaned[name], int) and not isinstance(cleaned[name], bool)
            ):
                raise SettingsInvalid(f"{name} must be an integer.", name)
        delay = cleaned.get("provision_delay_seconds", 0)
        if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            raise SettingsInvalid(
                "provision_delay_seconds must be a number ≥ 0.", "provision_delay_seconds"
            )
        faults = cleaned.get("faults", {})
        try:
            if not isinstance(faults, dict) or set(faults) - {"rates", "retry_after_seconds"}:
                raise ValueError("only `rates` and `retry_after_seconds` may be configured")
            FaultPlan.from_dict(faults)
        except (ValueError, TypeError, AttributeError) as error:
            raise SettingsInvalid(f"faults: {error}", "faults") from None
        return cleaned

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cloud = SimulatedCloud(
            self.context.state_dir / f"simulated-{self.context.provider_id}.sqlite3",
            seed=int(self.settings.get("seed", 0)),
            faults=self.settings.get("faults"),
            clock=self.context.clock,
        )
        raw = self.settings.get("flavors") or DEFAULT_FLAVORS
        self.flavors = {spec.sku: spec for spec in (_flavor(f, i) for i, f in enumerate(raw))}
        raw_types = self.settings.get("volume_types") or DEFAULT_VOLUME_TYPES
        self.volume_types = {
            kind.sku: kind for kind in (_volume_type(t, i) for i, t in enumerate(raw_types))
        }
        self.endpoint = str(
            self.settings.get("object_storage_endpoint", DEFAULT_OBJECT_STORAGE_ENDPOINT)
        )
        self.delay = timedelta(seconds=float(self.settings.get("provision_delay_seconds", 0)))

    # Faults ------------------------------------------------------------------------------

    def _fail_before(self, fault: Fault | None, *, create: bool = False) -> None:
        """Raise what the broker would see for a fault that stops the call before any work."""
        if fault is Fault.THROTTLED:
            raise Throttled("429 Too Many Requests", retry_after=self.cloud.retry_after_seconds)
        if fault is Fault.SERVER_ERROR:
            raise (OutcomeUnknown if create else Retryable)("503 Service Unavailable")
        if fault is Fault.TIMEOUT_BEFORE:
            raise (OutcomeUnknown if create else Retryable)("timed out")

    def _fail_after(self, fault: Fault | None, *, create: bool = False) -> None:
        if fault is Fault.TIMEOUT_AFTER_COMMIT:
            raise (OutcomeUnknown if create else Retryable)("timed out (the work was done)")

    # Instances ---------------------------------------------------------------------------

    def _view(self, record: Mapping[str, Any]) -> Instance:
        state = InstanceState(record["state"])
        if state is InstanceState.PENDING and self.context.clock() >= datetime.fromisoformat(
            record["ready_at"]
        ):
            state = InstanceState.RUNNING
        return Instance(
            ref=record["ref"],
            state=state,
            token=record["token"],
            sku=record["sku"],
            region=record["region"],
            addresses=tuple(record["addresses"]),
            created_at=datetime.fromisoformat(record["created_at"]),
            extra={"simulated": True},
        )

    def _transition(self, record: dict[str, Any], state: InstanceState) -> None:
        now = self.context.clock()
        current = self._view(record).state
        if current is InstanceState.RUNNING and record["state"] == InstanceState.PENDING:
            # Materialise the end of provisioning so usage counts from `ready_at`.
            record["history"].append([record["ready_at"], InstanceState.RUNNING.value])
        record["state"] = state.value
        record["history"].append([_iso(now), state.value])

    def list_offers(self) -> list[OfferSpec]:
        def work(state: _State, fault: Fault | None) -> list[OfferSpec]:
            self._fail_before(fault)
            self._fail_after(fault)
            return list(self.flavors.values())

        return self.cloud.call(Operation.LIST_OFFERS, work)

    def provision(self, request: ProvisionRequest, idempotency_token: str) -> Instance:
        spec = self.flavors.get(request.sku)
        if spec is None:
            raise Permanent(f"No flavor {request.sku!r} here.", code="invalid_request")

        def work(state: _State, fault: Fault | None) -> Instance:
            self._fail_before(fault, create=True)
            limit = self.settings.get("max_instances")
            if fault is Fault.QUOTA_EXCEEDED or (
                limit is not None and state.instances.count_live() >= limit
            ):
                raise Permanent("Quota exceeded for instances.", code="quota_exceeded")
            now = self.context.clock()
            state.counter += 1
            ref = f"sim-{state.counter:06d}"
            record = {
                "ref": ref,
                "token": idempotency_token,
                "name": request.name,
                "sku": spec.sku,
                "region": request.region,
                "vcpu": spec.vcpu,
                "ram_gib": str(spec.ram_gib),
                "addresses": [f"10.99.{state.counter // 256 % 256}.{state.counter % 256}"],
                "created_at": _iso(now),
                "ready_at": _iso(now + self.delay),
                "state": InstanceState.PENDING.value,
                "history": [[_iso(now), InstanceState.PENDING.value]],
            }
            state.instances[ref] = record
            self._fail_after(fault, create=True)
            return self._view(record)

        return self.cloud.call(Operation.PROVISION, work)

    def _with_instance(
        self, operation: Operation, ref: str, act: Callable[[dict[str, Any] | None], T]
    ) -> T:
        def work(state: _State, fault: Fault | None) -> T:
            if fault is Fault.DELETED_OUT_OF_BAND:
                state.instances.pop(ref)
                state.detach_from(ref)
            self._fail_before(fault)
            result = act(state.instances.get(ref))
            self._fail_after(fault)
            return result

        return self.cloud.call(operation, work)

    def get(self, ref: str) -> Instance | None:
        return self._with_instance(Operation.GET, ref, self._live_view)

    def _live_view(self, record: Mapping[str, Any] | None) -> Instance | None:
        if record is None or record["state"] == InstanceState.DELETED:
            return None
        return self._view(record)

    def find_by_token(self, token: str) -> Instance | None:
        def work(state: _State, fault: Fault | None) -> Instance | None:
            matches = [
                r for r in state.instances.where(token=token) if r["state"] != InstanceState.DELETED
            ]
            if fault is Fault.DELETED_OUT_OF_BAND:
                for record in matches:
                    state.instances.pop(record["ref"])
                    state.detach_from(record["ref"])
                matches = []
            self._fail_before(fault)
            self._fail_after(fault)
            return self._view(matches[0]) if matches else None

        return self.cloud.call(Operation.FIND_BY_TOKEN, work)

    def action(self, ref: str, action: Action) -> Instance:
        target = {
            Action.START: InstanceState.RUNNING,
            Action.STOP: InstanceState.STOPPED,
            Action.REBOOT: InstanceState.RUNNING,
        }[action]

        def act(record: dict[str, Any] | None) -> Instance:
            if record is None or record["state"] == InstanceState.DELETED:
                raise Permanent(f"No instance {ref}.", code="not_found")
            if self._view(record).state is InstanceState.PENDING:
                raise Permanent("The instance is still being created.", code="conflict")
            self._transition(record, target)
            return self._view(record)

        return self._with_instance(Operation.ACTION, ref, act)

    def deprovision(self, ref: str) -> None:
        def work(state: _State, fault: Fault | None) -> None:
            if fault is Fault.DELETED_OUT_OF_BAND:
                state.instances.pop(ref)
                state.detach_from(ref)
            self._fail_before(fault)
            record = state.instances.get(ref)
            if record is not None and record["state"] != InstanceState.DELETED:
                # Deleted instances are kept (as `deleted`) so usage up to now stays reportable.
                self._transition(record, InstanceState.DELETED)
                state.detach_from(ref)
            self._fail_after(fault)

        self.cloud.call(Operation.DEPROVISION, work)

    # Storage: the adapter is its own volume and object storage driver ---------------------

    def volumes(self) -> VolumeDriver:
        return self

    def object_storage(self) -> ObjectStorageDriver:
        return self

    def _with_record(
        self,
        operation: Operation,
        kind: str,
        ref: str,
        act: Callable[[_State, dict[str, Any] | None], T],
    ) -> T:
        """Run `act` on the volume or bucket `ref` (None when the cloud has no such thing),
        with the fault drawn for `operation`."""

        def work(state: _State, fault: Fault | None) -> T:
            if fault is Fault.DELETED_OUT_OF_BAND:
                self._forget(state, kind, ref)
            self._fail_before(fault)
            result = act(state, getattr(state, kind).get(ref))
            self._fail_after(fault)
            return result

        return self.cloud.call(operation, work)

    @staticmethod
    def _forget(state: _State, kind: str, ref: str) -> None:
        """What deleting `ref` behind the broker's back leaves: nothing (a bucket's keys go
        with it)."""
        getattr(state, kind).pop(ref)
        if kind == "buckets":
            for key in state.keys.where(bucket=ref):
                state.keys.pop(key["key_id"])

    # Volumes ------------------------------------------------------------------------------

    def _volume_view(self, record: Mapping[str, Any]) -> Volume:
        state = InstanceState(record["state"])
        if state is InstanceState.PENDING and self.context.clock() >= datetime.fromisoformat(
            record["ready_at"]
        ):
            state = InstanceState.RUNNING
        return Volume(
            ref=record["ref"],
            state=state,
            size_gib=record["size_gib"],
            token=record["token"],
            region=record["region"],
            attached_to=record["attached_to"],
            encrypted=record["encrypted"],
            extra={
                "simulated": True,
                "sku": record["sku"],
                "iops": record["iops"],
                "name": record["name"],
            },
        )

    def _live_volume(self, record: Mapping[str, Any] | None) -> Volume | None:
        if record is None or record["state"] == InstanceState.DELETED:
            return None
        return self._volume_view(record)

    def _volume_or_refuse(self, ref: str, record: dict[str, Any] | None) -> dict[str, Any]:
        if record is None or record["state"] == InstanceState.DELETED:
            raise Permanent(f"No volume {ref}.", code="not_found")
        return record

    def create_volume(self, request: VolumeRequest, idempotency_token: str) -> Volume:
        kind = self.volume_types.get(request.sku)
        if kind is None:
            raise Permanent(f"No volume type {request.sku!r} here.", code="invalid_request")
        if kind.region is not None and kind.region != request.region:
            raise Permanent(
                f"Volume type {kind.sku!r} is not sold in {request.region!r}.",
                code="invalid_request",
            )
        if request.size_gib < 1 or (request.iops is not None and request.iops < 1):
            raise Permanent("A volume needs a positive size (and iops).", code="invalid_request")

        def work(state: _State, fault: Fault | None) -> Volume:
            self._fail_before(fault, create=True)
            limit = self.settings.get("max_volumes")
            if fault is Fault.QUOTA_EXCEEDED or (
                limit is not None and state.volumes.count_live() >= limit
            ):
                raise Permanent("Quota exceeded for volumes.", code="quota_exceeded")
            now = self.context.clock()
            state.counter += 1
            ref = f"vol-{state.counter:06d}"
            record = {
                "ref": ref,
                "token": idempotency_token,
                "name": request.name,
                "sku": kind.sku,
                "region": request.region,
                "size_gib": request.size_gib,
                "iops": request.iops if request.iops is not None else kind.iops,
                "encrypted": request.encrypted,
                "attached_to": None,
                "created_at": _iso(now),
                "ready_at": _iso(now + self.delay),
                "state": InstanceState.PENDING.value,
                "history": [[_iso(now), "created", request.size_gib]],
            }
            state.volumes[ref] = record
            self._fail_after(fault, create=True)
            return self._volume_view(record)

        return self.cloud.call(Operation.PROVISION, work)

    def get_volume(self, ref: str) -> Volume | None:
        return self._with_record(
            Operation.GET, "volumes", ref, lambda state, record: self._live_volume(record)
        )

    def find_volume(self, token: str) -> Volume | None:
        def work(state: _State, fault: Fault | None) -> Volume | None:
            matches = [
                v for v in state.volumes.where(token=token) if v["state"] != InstanceState.DELETED
            ]
            if fault is Fault.DELETED_OUT_OF_BAND:
                for record in matches:
                    state.volumes.pop(record["ref"])
                matches = []
            self._fail_before(fault)
            self._fail_after(fault)
            return self._volume_view(matches[0]) if matches else None

        return self.cloud.call(Operation.FIND_BY_TOKEN, work)

    def resize_volume(self, ref: str, size_gib: int) -> Volume:
        def act(state: _State, found: dict[str, Any] | None) -> Volume:
            record = self._volume_or_refuse(ref, found)
            if size_gib < record["size_gib"]:
                raise Permanent(
                    f"Volume {ref} has {record['size_gib']} GiB: volumes only grow.",
                    code="volume_shrink",
                )
            if size_gib == record["size_gib"]:
                return self._volume_view(record)
            if self._volume_view(record).state is InstanceState.PENDING:
                raise Permanent("The volume is still being created.", code="conflict")
            record["size_gib"] = size_gib
            record["history"].append([_iso(self.context.clock()), "resized", size_gib])
            return self._volume_view(record)

        return self._with_record(Operation.ACTION, "volumes", ref, act)

    def attach_volume(self, ref: str, instance_ref: str) -> Volume:
        def act(state: _State, found: dict[str, Any] | None) -> Volume:
            record = self._volume_or_refuse(ref, found)
            machine = state.instances.get(instance_ref)
            if machine is None or machine["state"] == InstanceState.DELETED:
                raise Permanent(f"No instance {instance_ref}.", code="not_found")
            if record["attached_to"] == instance_ref:
                return self._volume_view(record)
            if record["attached_to"] is not None:
                raise Permanent(
                    f"Volume {ref} is attached to {record['attached_to']}.", code="conflict"
                )
            if machine["region"] != record["region"]:
                raise Permanent(
                    f"Volume {ref} and instance {instance_ref} are in different regions.",
                    code="invalid_request",
                )
            if (
                self._volume_view(record).state is InstanceState.PENDING
                or self._view(machine).state is InstanceState.PENDING
            ):
                raise Permanent("The volume or the instance is still being created.", "conflict")
            record["attached_to"] = instance_ref
            record["history"].append([_iso(self.context.clock()), "attached", instance_ref])
            return self._volume_view(record)

        return self._with_record(Operation.ACTION, "volumes", ref, act)

    def detach_volume(self, ref: str) -> Volume:
        def act(state: _State, found: dict[str, Any] | None) -> Volume:
            record = self._volume_or_refuse(ref, found)
            if record["attached_to"] is not None:
                record["attached_to"] = None
                record["history"].append([_iso(self.context.clock()), "detached", None])
            return self._volume_view(record)

        return self._with_record(Operation.ACTION, "volumes", ref, act)

    def delete_volume(self, ref: str) -> None:
        def act(state: _State, record: dict[str, Any] | None) -> None:
            if record is None or record["state"] == InstanceState.DELETED:
                return
            if record["attached_to"] is not None:
                raise Permanent(
                    f"Volume {ref} is attached to {record['attached_to']}: detach it first.",
                    code="conflict",
                )
            # Kept (as `deleted`) like instances, so the cloud side shows what became of it.
            record["state"] = InstanceState.DELETED.value
            record["history"].append([_iso(self.context.clock()), "deleted", None])

        self._with_record(Operation.DEPROVISION, "volumes", ref, act)

    # Buckets ------------------------------------------------------------------------------

    def _bucket_view(self, record: Mapping[str, Any]) -> Bucket:
        return Bucket(
            ref=record["name"],
            state=InstanceState.RUNNING,
            endpoint=self.endpoint,
            token=record["token"],
            region=record["region"],
            encrypted=record["encrypted"],
            versioning=record["versioning"],
            retention_days=record["retention_days"],
            extra={"simulated": True, "sku": record["sku"]},
        )

    def _bucket_or_refuse(self, ref: str, record: dict[str, Any] | None) -> dict[str, Any]:
        if record is None:
            raise Permanent(f"No bucket {ref}.", code="not_found")
        return record

    def _retained(self, record: Mapping[str, Any]) -> Retained:
        days = record["retention_days"]
        if not days:
            return Retained(0)
        now = self.context.clock()
        held = [
            until
            for written in record["objects"].values()
            if (until := datetime.fromisoformat(written) + timedelta(days=days)) > now
        ]
        return Retained(len(held), max(held) if held else None)

    def create_bucket(self, request: BucketRequest, idempotency_token: str) -> Bucket:
        if not _BUCKET_NAME.fullmatch(request.name) or ".." in request.name:
            raise Permanent(f"{request.name!r} is not a valid bucket name.", "invalid_request")
        if request.retention_days is not None and request.retention_days < 1:
            raise Permanent("A retention is a positive number of days.", "invalid_request")

        def work(state: _State, fault: Fault | None) -> Bucket:
            self._fail_before(fault, create=True)
            if fault is Fault.QUOTA_EXCEEDED:
                raise Permanent("Quota exceeded for buckets.", code="quota_exceeded")
            existing = state.buckets.get(request.name)
            if existing is not None:
                if existing["token"] != idempotency_token:
                    raise Permanent(f"Bucket {request.name} exists already.", code="conflict")
                record = existing  # S3's BucketAlreadyOwnedByYou: this create was done
            else:
                record = {
                    "name": request.name,
                    "token": idempotency_token,
                    "sku": request.sku,
                    "region": request.region,
                    "encrypted": request.encrypted,
                    # Object lock needs versioning (as on S3).
                    "versioning": request.versioning or request.retention_days is not None,
                    "retention_days": request.retention_days,
                    "created_at": _iso(self.context.clock()),
                    "objects": {},
                }
                state.buckets[request.name] = record
            self._fail_after(fault, create=True)
            return self._bucket_view(record)

        return self.cloud.call(Operation.PROVISION, work)

    def get_bucket(self, ref: str) -> Bucket | None:
        return self._with_record(
            Operation.GET,
            "buckets",
            ref,
            lambda state, record: None if record is None else self._bucket_view(record),
        )

    def find_bucket(self, token: str) -> Bucket | None:
        def work(state: _State, fault: Fault | None) -> Bucket | None:
            matches = state.buckets.where(token=token)
            if fault is Fault.DELETED_OUT_OF_BAND:
                for record in matches:
                    self._forget(state, "buckets", record["name"])
                matches = []
            self._fail_before(fault)
            self._fail_after(fault)
            return self._bucket_view(matches[0]) if matches else None

        return self.cloud.call(Operation.FIND_BY_TOKEN, work)

    def set_retention(self, ref: str, days: int) -> Bucket:
        if days < 1:
            raise Permanent("A retention is a positive number of days.", "invalid_request")

        def act(state: _State, found: dict[str, Any] | None) -> Bucket:
            record = self._bucket_or_refuse(ref, found)
            current = record["retention_days"]
            if current is not None and days < current:
                raise Permanent(
                    f"Bucket {ref} retains objects {current} days: a retention is never shortened.",
                    code="retention_shortened",
                )
            record["retention_days"] = days
            record["versioning"] = True
            return self._bucket_view(record)

        return self._with_record(Operation.ACTION, "buckets", ref, act)

    def retained(self, ref: str) -> Retained:
        return self._with_record(
            Operation.ACTION,
            "buckets",
            ref,
            lambda state, record: self._retained(self._bucket_or_refuse(ref, record)),
        )

    def delete_bucket(self, ref: str) -> None:
        def act(state: _State, record: dict[str, Any] | None) -> None:
            if record is None:
                return
            held = self._retained(record)
            if held.objects:
                until = held.until.date().isoformat() if held.until else "later"
                raise Permanent(
                    f"Bucket {ref} holds {held.objects} object(s) under retention until {until}.",
                    code="under_retention",
                )
            self._forget(state, "buckets", ref)

        self._with_record(Operation.DEPROVISION, "buckets", ref, act)

    def issue_key(self, ref: str, token: str) -> AccessKey:
        def act(state: _State, found: dict[str, Any] | None) -> AccessKey:
            self._bucket_or_refuse(ref, found)
            for key in state.keys.where(bucket=ref, token=token):
                # A key issued for this token by a call whose answer was lost.
                if not key["revoked"]:
                    return AccessKey(key["key_id"], key["secret"])
            state.counter += 1
            key_id = f"SIMK{state.counter:016d}"
            key = state.keys[key_id] = {
                "key_id": key_id,
                "secret": secrets.token_urlsafe(30),
                "bucket": ref,
                "token": token,
                "created_at": _iso(self.context.clock()),
                "revoked": False,
            }
            return AccessKey(key_id, key["secret"])

        return self._with_record(Operation.ACTION, "buckets", ref, act)

    def revoke_key(self, ref: str, key_id: str) -> None:
        def act(state: _State, record: dict[str, Any] | None) -> None:
            key = state.keys.get(key_id)
            # A key of another bucket is not this bucket's to revoke: nothing to do here.
            if key is not None and key["bucket"] == ref:
                key["revoked"] = True

        self._with_record(Operation.ACTION, "buckets", ref, act)

    # Usage -------------------------------------------------------------------------------

    def usage(self, since: datetime, until: datetime) -> list[UsageSample]:
        """One sample per instance, metric and clock hour of `[since, until)` it ran in, and
        per bucket and clock hour it stored something in (`storage_gib_month`)."""

        def work(state: _State, fault: Fault | None) -> list[UsageSample]:
            self._fail_before(fault)
            samples = [
                sample
                for record in state.instances.values()
                for sample in self._samples(record, since, until)
            ]
            samples += [
                sample
                for name, bucket in state.buckets.all().items()
                for sample in self._stored(name, bucket, since, until)
            ]
            self._fail_after(fault)
            return samples

        return self.cloud.call(Operation.USAGE, work)

    def _stored(
        self, name: str, bucket: Mapping[str, Any], since: datetime, until: datetime
    ) -> Iterator[UsageSample]:
        """GiB-months the bucket held in each clock hour: every version written, from its
        write on (a month is 730 hours), to 6 decimals as clouds report."""
        writes = [(datetime.fromisoformat(at), size) for at, size in bucket.get("stored", [])]
        hour = since.replace(minute=0, second=0, microsecond=0)
        while hour < until and writes:
            start, end = max(since, hour), min(until, hour + timedelta(hours=1))
            byte_seconds = sum(
                size * max(0.0, (end - max(start, at)).total_seconds()) for at, size in writes
            )
            if byte_seconds > 0:
                gib_hours = Decimal(int(byte_seconds)) / Decimal(3600 * 2**30)
                yield UsageSample(
                    record_id=f"{name}:storage_gib_month:{_iso(start)}:{_iso(end)}",
                    ref=name,
                    metric="storage_gib_month",
                    quantity=(gib_hours / 730).quantize(Decimal("0.000001")),
                    start=start,
                    end=end,
                    token=bucket.get("token"),
                )
            hour += timedelta(hours=1)

    def _running_intervals(self, record: Mapping[str, Any]) -> list[tuple[datetime, datetime]]:
        events = [(datetime.fromisoformat(at), state) for at, state in record["history"]]
        if record["state"] == InstanceState.PENDING:
            events.append((datetime.fromisoformat(record["ready_at"]), InstanceState.RUNNING))
        intervals = []
        start: datetime | None = None
        for at, state in sorted(events, key=lambda event: event[0]):
            if state == InstanceState.RUNNING and start is None:
                start = at
            elif state != InstanceState.RUNNING and start is not None:
                intervals.append((start, at))
                start = None
        if start is not None:
            intervals.append((start, self.context.clock()))
        return intervals

    def _samples(
        self, record: Mapping[str, Any], since: datetime, until: datetime
    ) -> Iterator[UsageSample]:
        hour = since.replace(minute=0, second=0, microsecond=0)
        intervals = self._running_intervals(record)
        while hour < until:
            start, end = max(since, hour), min(until, hour + timedelta(hours=1))
            seconds = sum(
                max(0.0, (min(end, b) - max(start, a)).total_seconds()) for a, b in intervals
            )
            if seconds > 0:
                hours = Decimal(int(seconds)) / Decimal(3600)
                for metric, per_hour in (
                    ("vcpu_hour", Decimal(record["vcpu"])),
                    ("ram_gib_hour", Decimal(record["ram_gib"])),
                ):
                    yield UsageSample(
                        record_id=f"{record['ref']}:{metric}:{_iso(start)}:{_iso(end)}",
                        ref=record["ref"],
                        metric=metric,
                        quantity=(hours * per_hour).quantize(Decimal("0.000001")),
                        start=start,
                        end=end,
                        token=record["token"],
                    )
            hour += timedelta(hours=1)
