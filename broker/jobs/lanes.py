"""Lanes: which jobs compete with which for a worker.

Every job kind belongs to one lane, stored on the job when it is queued (`Job.lane`). A worker
claims from its lanes in priority order — provisioning first, webhook deliveries last — so a
flood of deliveries (one agency's 60 endpoints that never answer, say) cannot hold back
another agency's machines; inside a lane the organizations take turns (see `claim` in
broker/jobs/queue.py). `broker worker --lanes webhooks` runs a worker for some lanes only.

| lane | kinds |
|---|---|
| `provisioning` | order provisioning, resource actions, reconciliation with the providers |
| `billing` | metering, usage polling, billing runs, Stripe syncs, voids and credit notes |
| `catalogue` | offer syncs from the providers' clouds |
| `other` | any kind no lane names (none in the broker itself; tests, plugins) |
| `webhooks` | agencies' webhook deliveries, invitation e-mails |

The kinds are named here as text, not imported from the services, because the services queue
jobs through broker/jobs/queue.py, which reads this table: tests/test_fair_jobs.py checks
that every kind of `HANDLERS` has a lane.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PROVISIONING = "provisioning"
BILLING = "billing"
CATALOGUE = "catalogue"
OTHER = "other"
WEBHOOKS = "webhooks"

# Priority order: a worker of every lane tries them in this order (but see `LaneSchedule`).
LANES: tuple[str, ...] = (PROVISIONING, BILLING, CATALOGUE, OTHER, WEBHOOKS)

LANE_OF_KIND: dict[str, str] = {
    "order.provision": PROVISIONING,
    "resource.action": PROVISIONING,
    "resources.reconcile": PROVISIONING,
    "usage.meter": BILLING,
    "usage.poll": BILLING,
    "billing.run": BILLING,
    "payments.stripe_sync": BILLING,
    "payments.stripe_void": BILLING,
    "payments.stripe_paid_outside": BILLING,
    "payments.stripe_credit": BILLING,
    "provider.sync_offers": CATALOGUE,
    "webhook.deliver": WEBHOOKS,
    "invitation.email": WEBHOOKS,
}

# A lane left waiting this many claims in a row (a higher lane always had work) is tried
# first, once: the lanes behind a busy one slow down, they never stop.
LANE_BUDGET = 10


def lane_of(kind: str) -> str:
    """The lane of jobs of `kind` (`other` for a kind no lane names)."""
    return LANE_OF_KIND.get(kind, OTHER)


def parse_lanes(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """Lanes named by `text` (`"provisioning,billing"`, or a list), in priority order; every
    lane when none is named. `ValueError` names an unknown lane."""
    if text is None:
        return LANES
    names = text.split(",") if isinstance(text, str) else list(text)
    wanted = {name.strip() for name in names if name.strip()}
    unknown = sorted(wanted - set(LANES))
    if unknown:
        raise ValueError(
            f"Unknown lane(s): {', '.join(unknown)}. The lanes are: {', '.join(LANES)}."
        )
    if not wanted:
        return LANES
    return tuple(lane for lane in LANES if lane in wanted)


class LaneSchedule:
    """The order one worker tries its lanes in, claim after claim.

    Priority order, except that the lanes left waiting `budget` claims in a row (lanes before
    them had work each time, so they were never tried) go first, once. A lane tried — served,
    or found empty — starts waiting from zero again. So with provisioning always busy, webhook
    deliveries (last) still get one claim in `budget + 1`; and a lane that is due but empty
    costs one query, once.
    """

    def __init__(self, lanes: Sequence[str] | None = None, budget: int = LANE_BUDGET) -> None:
        self.lanes = parse_lanes(lanes)
        self.budget = budget
        self.waited = dict.fromkeys(self.lanes, 0)

    def order(self) -> list[str]:
        """The lanes to try for the next claim, first to last."""
        due = [lane for lane in self.lanes if self.waited[lane] >= self.budget]
        return due + [lane for lane in self.lanes if lane not in due]

    def record(self, order: Sequence[str], served: str | None) -> None:
        """After a claim that tried `order` and was served from `served` (None: every lane
        was empty)."""
        tried = list(order) if served is None else list(order[: list(order).index(served) + 1])
        for lane in self.lanes:
            self.waited[lane] = 0 if lane in tried else self.waited[lane] + 1
