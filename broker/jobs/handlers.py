"""`dispatch`: which handler runs which kind of job."""

from __future__ import annotations

from broker.jobs.queue import Handler
from broker.services import offer_sync

HANDLERS: dict[str, Handler] = {
    offer_sync.JOB_KIND: offer_sync.run_sync_job,
}
