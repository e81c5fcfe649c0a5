"""What the adapter contract suite needs from each adapter's test setup.

Every built-in adapter provides a `harness(tmp_path)` context manager yielding a `Harness`:
a way to build the adapter (pointed at its fake cloud), the fault plan that cloud honours, and
two views from the cloud's side that the adapter itself cannot be trusted to give (how many
instances carry a token; deleting an instance behind the broker's back).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from werkzeug.serving import WSGIRequestHandler, make_server

from providers.base import AccessKey, AdapterContext, Bucket, ProviderAdapter
from providers.http import HttpPolicy

# Fake clouds make a "timeout" fault hang for longer than this client timeout.
TEST_TIMEOUT = 0.5
HANG_SECONDS = 1.0


class FaultInjector(Protocol):
    """A `FaultPlan`, or a handle on one kept elsewhere (the simulated cloud's database)."""

    retry_after_seconds: int

    def inject(self, operation: str, *faults: str) -> None: ...


@dataclass
class Harness:
    build: Callable[[], ProviderAdapter]  # a fresh adapter (as after a broker restart)
    faults: FaultInjector
    count_with_token: Callable[[str], int]  # live instances carrying the token, cloud-side
    delete_out_of_band: Callable[[str], None]  # delete by ref, behind the adapter's back
    sku: str  # a machine type the cloud sells
    region: str
    features: frozenset[str] = field(default_factory=frozenset)
    # Storage, for adapters with `Feature.VOLUMES` / `Feature.OBJECT_STORAGE` (else None).
    volume_sku: str | None = None  # a volume type the cloud sells
    count_volumes_with_token: Callable[[str], int] | None = None  # cloud-side view
    delete_volume_out_of_band: Callable[[str], None] | None = None
    count_buckets_with_token: Callable[[str], int] | None = None  # cloud-side view
    # Write an object into a bucket as its user would, with a key the adapter issued: under
    # the bucket's default retention, if it has one.
    put_object: Callable[[Bucket, AccessKey, str], None] | None = None


def test_context(tmp_path: object) -> AdapterContext:
    from pathlib import Path

    return AdapterContext(
        provider_id=uuid.uuid4(),
        state_dir=Path(str(tmp_path)),
        http=HttpPolicy(timeout=TEST_TIMEOUT, allow_private=True),
    )


test_context.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@contextmanager
def serve_wsgi(app: Callable[..., object]) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1 (free port) in a thread; yield its base URL."""
    server = make_server(
        "127.0.0.1",
        0,
        app,  # type: ignore[arg-type]
        threaded=True,
        request_handler=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
