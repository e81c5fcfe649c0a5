"""A fake Stripe API on 127.0.0.1, for the Stripe gateway's tests (billing/stripe_gateway.py).

It speaks what the gateway uses, the way the real SDK sends it (form-encoded bodies with
`metadata[key]=…`, a query string on GET, `Authorization: Bearer <key>`):

| Endpoint                          | Does                                                   |
|-----------------------------------|--------------------------------------------------------|
| POST /v1/customers                | a `cus_` customer (name, metadata)                     |
| POST /v1/invoices                 | an `in_` draft invoice for a known customer            |
| GET  /v1/invoices                 | a list envelope, newest first: `customer`, `limit`,    |
|                                   | `starting_after`, `has_more`                           |
| GET  /v1/invoices/<id>            | the invoice: total = sum of its items                  |
| POST /v1/invoices/<id>/finalize   | draft → open (400 for any other status)                |
| POST /v1/invoices/<id>/void       | open/uncollectible → void (400 for any other status)   |
| POST /v1/invoices/<id>/pay        | `paid_out_of_band`: open/uncollectible → paid (400     |
|                                   | for any other status; collecting money is not faked)   |
| DELETE /v1/invoices/<id>          | a draft and its items are gone (400 for any other)     |
| POST /v1/invoiceitems             | an `ii_` item on a draft invoice (400 otherwise)       |
| GET  /v1/invoiceitems             | the same, filtered by `invoice`                        |
| POST /v1/credit_notes             | a `cn_` credit note of custom lines on an open or paid |
|                                   | invoice, never more than remains; a paid invoice's     |
|                                   | must say how it is settled (`out_of_band_amount`)      |
| GET  /v1/credit_notes             | the same, filtered by `invoice`                        |

Pages of lists are capped at `page_size` (default 2), so clients must paginate.

Like Stripe: errors come in its envelope (`{"error": {"type", "message", "code"?, "param"?}}`),
a wrong key gets 401, an unknown parameter 400, an unknown id 404 `resource_missing`.
Idempotency: the first successful answer to an `Idempotency-Key` is stored and replayed for the
same key (`Idempotent-Replayed: true`); the same key on another endpoint or with other
parameters gets 400 `idempotency_error`. Error answers are not stored.

Faults, on the n-th request to an endpoint ("POST /v1/invoiceitems", "GET /v1/invoices/<id>"):
`fail_before` answers an error without doing anything; `fail_after_commit` does the work,
stores its idempotent answer, then answers 500 (an answer lost on the way back).
`total_skew` adds to every invoice's reported total (a Stripe that disagrees with us);
`forget_idempotency_keys()` does what Stripe does to keys after a day.

Not faked: tax rates and automatic tax, discounts, customer balances, payments and payment
intents, sending invoices or emails, webhooks delivery, auto-advance, deleting drafts,
expansions, list filters other than the ones above, Stripe storing 500 answers for replay,
API versions, Connect accounts.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from tests.adapters.harness import serve_wsgi

API_KEY = "sk_test_fake_0123456789abcdef"
HOSTED_URL = "https://invoice.stripe.fake/i/"

Handler = Callable[[dict[str, Any], str | None], dict[str, Any]]


class ApiError(Exception):
    """An error answer in Stripe's envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type_,
            code,
            param,
        )


@dataclass
class _Fault:
    status: int
    after_commit: bool
    retry_after: int | None = None


@dataclass(frozen=True)
class _Stored:
    fingerprint: tuple[str, tuple[tuple[str, str], ...]]
    status: int
    body: dict[str, Any]


_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"/v1/customers"), "POST /v1/customers"),
    ("POST", re.compile(r"/v1/invoices"), "POST /v1/invoices"),
    ("GET", re.compile(r"/v1/invoices"), "GET /v1/invoices"),
    ("GET", re.compile(r"/v1/invoices/(?P<id>[^/]+)"), "GET /v1/invoices/<id>"),
    ("POST", re.compile(r"/v1/invoices/(?P<id>[^/]+)/finalize"), "POST /v1/invoices/<id>/finalize"),
    ("POST", re.compile(r"/v1/invoices/(?P<id>[^/]+)/void"), "POST /v1/invoices/<id>/void"),
    ("POST", re.compile(r"/v1/invoices/(?P<id>[^/]+)/pay"), "POST /v1/invoices/<id>/pay"),
    ("DELETE", re.compile(r"/v1/invoices/(?P<id>[^/]+)"), "DELETE /v1/invoices/<id>"),
    ("POST", re.compile(r"/v1/invoiceitems"), "POST /v1/invoiceitems"),
    ("GET", re.compile(r"/v1/invoiceitems"), "GET /v1/invoiceitems"),
    ("POST", re.compile(r"/v1/credit_notes"), "POST /v1/credit_notes"),
    ("GET", re.compile(r"/v1/credit_notes"), "GET /v1/credit_notes"),
)

# Top-level parameters each endpoint takes (Stripe refuses any other one).
_PARAMETERS: dict[str, frozenset[str]] = {
    "POST /v1/customers": frozenset({"name", "email", "description", "metadata", "expand"}),
    "POST /v1/invoices": frozenset(
        {
            "customer",
            "currency",
            "collection_method",
            "days_until_due",
            "auto_advance",
            "pending_invoice_items_behavior",
            "number",
            "metadata",
            "description",
            "expand",
        }
    ),
    "GET /v1/invoices": frozenset({"customer", "limit", "starting_after", "expand"}),
    "GET /v1/invoices/<id>": frozenset({"expand"}),
    "POST /v1/invoices/<id>/finalize": frozenset({"auto_advance", "expand"}),
    "POST /v1/invoices/<id>/void": frozenset({"expand"}),
    "POST /v1/invoices/<id>/pay": frozenset({"paid_out_of_band", "expand"}),
    "DELETE /v1/invoices/<id>": frozenset(),
    "POST /v1/invoiceitems": frozenset(
        {
            "customer",
            "invoice",
            "currency",
            "amount",
            "description",
            "metadata",
            "period",
            "expand",
        }
    ),
    "GET /v1/invoiceitems": frozenset(
        {"invoice", "customer", "limit", "starting_after", "ending_before", "expand"}
    ),
    "POST /v1/credit_notes": frozenset(
        {"invoice", "lines", "memo", "metadata", "out_of_band_amount", "reason", "expand"}
    ),
    "GET /v1/credit_notes": frozenset({"invoice", "limit", "starting_after", "expand"}),
}


class FakeStripe:
    """The WSGI app, and the Stripe account it holds in memory."""

    def __init__(self, *, api_key: str = API_KEY, page_size: int = 2) -> None:
        self.api_key = api_key
        self.page_size = page_size
        self.total_skew = 0  # added to every invoice's total, to make Stripe disagree
        self.customers: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, Any]] = {}  # in creation order
        self.credit_notes: dict[str, dict[str, Any]] = {}
        self.requests: Counter[str] = Counter()  # authenticated requests per endpoint
        self.replays: Counter[str] = Counter()  # idempotent replays per endpoint
        self._stored: dict[str, _Stored] = {}
        self._faults: dict[tuple[str, int], _Fault] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._handlers: dict[str, Handler] = {
            "POST /v1/customers": self._create_customer,
            "POST /v1/invoices": self._create_invoice,
            "GET /v1/invoices": self._list_invoices,
            "GET /v1/invoices/<id>": self._retrieve_invoice,
            "POST /v1/invoices/<id>/finalize": self._finalize_invoice,
            "POST /v1/invoices/<id>/void": self._void_invoice,
            "POST /v1/invoices/<id>/pay": self._pay_invoice,
            "DELETE /v1/invoices/<id>": self._delete_invoice,
            "POST /v1/invoiceitems": self._create_item,
            "GET /v1/invoiceitems": self._list_items,
            "POST /v1/credit_notes": self._create_credit_note,
            "GET /v1/credit_notes": self._list_credit_notes,
        }

    # -- for tests ----------------------------------------------------------------------------

    def fail_before(
        self, endpoint: str, call_number: int = 1, status: int = 500, retry_after: int | None = None
    ) -> None:
        """The `call_number`-th request to `endpoint` answers `status` and does nothing."""
        self._faults[(endpoint, call_number)] = _Fault(status, False, retry_after)

    def fail_after_commit(self, endpoint: str, call_number: int = 1) -> None:
        """The `call_number`-th request to `endpoint` does its work, then answers 500."""
        self._faults[(endpoint, call_number)] = _Fault(500, True)

    def items_of(self, invoice_id: str) -> list[dict[str, Any]]:
        """The invoice's items, oldest first."""
        with self._lock:
            return [dict(i) for i in self.items.values() if i["invoice"] == invoice_id]

    def add_item(self, invoice_id: str, amount: int, description: str = "added by hand") -> None:
        """An item added behind the broker's back (in Stripe's dashboard, say)."""
        with self._lock:
            invoice = self.invoices[invoice_id]
            self._store_item(invoice, amount, description, {})

    def mark_paid(self, invoice_id: str) -> None:
        """The agency paid what it owed (in Stripe's dashboard, say)."""
        with self._lock:
            invoice = self.invoices[invoice_id]
            invoice["status"] = "paid"
            invoice["amount_paid"] = self._invoice_view(invoice)["amount_due"]

    def forget_idempotency_keys(self) -> None:
        """What Stripe does to a key after 24 hours: the next request with it runs afresh."""
        with self._lock:
            self._stored.clear()

    def count(self, endpoint: str) -> int:
        return self.requests[endpoint]

    # -- WSGI ---------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self._respond(Request(environ))(environ, start_response)

    def _respond(self, request: Request) -> Response:
        try:
            endpoint, path_id = _route(request.method, request.path)
            self._authenticate(request)
            form = request.args if request.method == "GET" else request.form
            params = _nested(form)
            unknown = sorted(set(params) - _PARAMETERS[endpoint])
            if unknown:
                raise ApiError(400, f"Received unknown parameter: {unknown[0]}", param=unknown[0])
            with self._lock:
                self.requests[endpoint] += 1
                fault = self._faults.pop((endpoint, self.requests[endpoint]), None)
            if fault is not None and not fault.after_commit:
                return _fault_response(fault)
            key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
            response = self._run(endpoint, path_id, params, form, key)
            if fault is not None:
                return _fault_response(fault)
            return response
        except ApiError as error:
            return _error(error)

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        presented = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if presented != self.api_key:
            shown = f"{presented[:8]}****{presented[-4:]}" if presented else "none"
            raise ApiError(401, f"Invalid API Key provided: {shown}")

    def _run(
        self,
        endpoint: str,
        path_id: str | None,
        params: dict[str, Any],
        form: MultiDict[str, str],
        key: str | None,
    ) -> Response:
        fingerprint = (f"{endpoint} {path_id or ''}", tuple(sorted(form.items(multi=True))))
        with self._lock:
            if key is not None and key in self._stored:
                stored = self._stored[key]
                if stored.fingerprint != fingerprint:
                    raise ApiError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.",
                        type_="idempotency_error",
                    )
                self.replays[endpoint] += 1
                response = _json(stored.status, stored.body)
                response.headers["Idempotent-Replayed"] = "true"
                return response
            body = self._handlers[endpoint](params, path_id)
            if key is not None:
                self._stored[key] = _Stored(fingerprint, 200, body)
        return _json(200, body)

    # -- endpoints (called with the lock held) --------------------------------------------------

    def _create_customer(self, params: dict[str, Any], _: str | None) -> dict[str, Any]:
        customer = {
            "id": self._new_id("cus"),
            "object": "customer",
            "created": int(time.time()),
            "livemode": False,
            "name": params.get("name"),
            "email": params.get("email"),
            "description": params.get("description"),
            "metadata": _metadata(params),
        }
        self.customers[customer["id"]] = customer
        return dict(customer)

    def _create_invoice(self, params: dict[str, Any], _: str | None) -> dict[str, Any]:
        customer = self._customer(params.get("customer"))
        currency = _required(params, "currency")
        method = params.get("collection_method", "charge_automatically")
        if method not in ("charge_automatically", "send_invoice"):
            raise ApiError(400, f"Invalid collection_method: {method}", param="collection_method")
        days = _integer(params, "days_until_due") if "days_until_due" in params else None
        if method == "send_invoice" and days is None:
            raise ApiError(400, "Missing days_until_due for send_invoice.", param="days_until_due")
        number = params.get("number")
        if number and any(i["number"] == number for i in self.invoices.values()):
            raise ApiError(400, f"Invoice number {number} already exists.", param="number")
        behavior = params.get("pending_invoice_items_behavior", "exclude")
        if behavior != "exclude":
            raise ApiError(
                400,
                "This fake only excludes pending items.",
                param="pending_invoice_items_behavior",
            )
        invoice = {
            "id": self._new_id("in"),
            "object": "invoice",
            "created": int(time.time()),
            "livemode": False,
            "customer": customer["id"],
            "currency": currency.lower(),
            "collection_method": method,
            "days_until_due": days,
            "auto_advance": _boolean(params, "auto_advance", default=True),
            "number": number or None,
            "metadata": _metadata(params),
            "status": "draft",
            "hosted_invoice_url": None,
            "amount_paid": 0,
        }
        self.invoices[invoice["id"]] = invoice
        return self._invoice_view(invoice)

    def _retrieve_invoice(self, _: dict[str, Any], invoice_id: str | None) -> dict[str, Any]:
        return self._invoice_view(self._invoice(invoice_id))

    def _finalize_invoice(self, params: dict[str, Any], invoice_id: str | None) -> dict[str, Any]:
        invoice = self._invoice(invoice_id)
        if invoice["status"] != "draft":
            raise ApiError(
                400, f"This invoice is {invoice['status']}: only a draft can be finalized."
            )
        if "auto_advance" in params:
            invoice["auto_advance"] = _boolean(params, "auto_advance", default=False)
        invoice["status"] = "open"
        invoice["number"] = invoice["number"] or f"FAKE-{len(self.invoices):04d}"
        invoice["hosted_invoice_url"] = f"{HOSTED_URL}{invoice['id']}"
        invoice["finalized_at"] = int(time.time())
        return self._invoice_view(invoice)

    def _delete_invoice(self, _: dict[str, Any], invoice_id: str | None) -> dict[str, Any]:
        invoice = self._invoice(invoice_id)
        if invoice["status"] != "draft":
            raise ApiError(
                400, f"You can only delete draft invoices; this one is {invoice['status']}."
            )
        del self.invoices[invoice["id"]]
        for item_id in [i for i, item in self.items.items() if item["invoice"] == invoice["id"]]:
            del self.items[item_id]
        return {"id": invoice["id"], "object": "invoice", "deleted": True}

    def _void_invoice(self, _: dict[str, Any], invoice_id: str | None) -> dict[str, Any]:
        invoice = self._invoice(invoice_id)
        if invoice["status"] not in ("open", "uncollectible"):
            raise ApiError(400, f"You cannot void an invoice that is {invoice['status']}.")
        invoice["status"] = "void"
        return self._invoice_view(invoice)

    def _pay_invoice(self, params: dict[str, Any], invoice_id: str | None) -> dict[str, Any]:
        invoice = self._invoice(invoice_id)
        if params.get("paid_out_of_band") != "true":
            raise ApiError(400, "Only payments out of band are faked.", param="paid_out_of_band")
        if invoice["status"] not in ("open", "uncollectible"):
            raise ApiError(400, f"You cannot pay an invoice that is {invoice['status']}.")
        invoice["status"] = "paid"
        return self._invoice_view(invoice)

    def _create_item(self, params: dict[str, Any], _: str | None) -> dict[str, Any]:
        customer = self._customer(params.get("customer"))
        invoice = self._invoice(_required(params, "invoice"), param="invoice")
        if invoice["customer"] != customer["id"]:
            raise ApiError(400, "The invoice belongs to another customer.", param="invoice")
        if invoice["status"] != "draft":
            raise ApiError(
                400,
                f"Invoice {invoice['id']} is {invoice['status']}: items can only be added to a "
                "draft invoice.",
                param="invoice",
            )
        currency = _required(params, "currency").lower()
        if currency != invoice["currency"]:
            raise ApiError(400, "The currency differs from the invoice's.", param="currency")
        period = params.get("period")
        if period is not None:
            if not isinstance(period, dict) or set(period) != {"start", "end"}:
                raise ApiError(400, "period takes start and end.", param="period")
            period = {"start": _integer(period, "start"), "end": _integer(period, "end")}
        item = self._store_item(
            invoice, _integer(params, "amount"), params.get("description"), _metadata(params)
        )
        item["period"] = period
        return dict(item)

    def _list_invoices(self, params: dict[str, Any], _: str | None) -> dict[str, Any]:
        found = [
            self._invoice_view(invoice)
            for invoice in reversed(self.invoices.values())  # newest first, like Stripe
            if params.get("customer") in (None, invoice["customer"])
        ]
        return self._page(params, "/v1/invoices", "invoice", found)

    def _list_items(self, params: dict[str, Any], _: str | None) -> dict[str, Any]:
        found = [
            dict(item)
            for item in reversed(self.items.values())
            if params.get("invoice") in (None, item["invoice"])
            and params.get("customer") in (None, item["customer"])
        ]
        return self._page(params, "/v1/invoiceitems", "invoiceitem", found)

    def _create_credit_note(self, params: dict[str, Any], _: str | None) -> dict[str, Any]:
        invoice = self._invoice(_required(params, "invoice"), param="invoice")
        if invoice["status"] not in ("open", "paid"):
            raise ApiError(
                400, f"Credit notes need an open or paid invoice; this one is {invoice['status']}."
            )
        lines = params.get("lines")
        if not isinstance(lines, dict) or not lines:
            raise ApiError(400, "Missing required param: lines.", param="lines")
        total = 0
        for index in sorted(lines, key=int):
            line = lines[index]
            if not isinstance(line, dict) or line.get("type") != "custom_line_item":
                raise ApiError(400, "This fake only takes custom line items.", param="lines")
            total += _integer(line, "quantity") * _integer(line, "unit_amount")
        view = self._invoice_view(invoice)
        if total > view["total"] - view["credited"]:
            raise ApiError(400, "The credit note exceeds what remains of the invoice.")
        out_of_band = (
            _integer(params, "out_of_band_amount") if "out_of_band_amount" in params else 0
        )
        if invoice["status"] == "paid" and out_of_band != total:
            raise ApiError(400, "A paid invoice's credit note must say how it is settled.")
        note = {
            "id": self._new_id("cn"),
            "object": "credit_note",
            "invoice": invoice["id"],
            "currency": invoice["currency"],
            "total": total,
            "amount": total,
            "out_of_band_amount": out_of_band or None,
            "memo": params.get("memo"),
            "metadata": _metadata(params),
            "status": "issued",
        }
        self.credit_notes[note["id"]] = note
        return dict(note)

    def _list_credit_notes(self, params: dict[str, Any], _: str | None) -> dict[str, Any]:
        found = [
            dict(note)
            for note in reversed(self.credit_notes.values())
            if params.get("invoice") in (None, note["invoice"])
        ]
        return self._page(params, "/v1/credit_notes", "credit_note", found)

    # -- helpers --------------------------------------------------------------------------------

    def _page(
        self, params: dict[str, Any], url: str, kind: str, found: list[dict[str, Any]]
    ) -> dict[str, Any]:
        limit = _integer(params, "limit") if "limit" in params else 10
        if not 1 <= limit <= 100:
            raise ApiError(400, "limit must be between 1 and 100.", param="limit")
        start = 0
        cursor = params.get("starting_after")
        if cursor is not None:
            ids = [item["id"] for item in found]
            if cursor not in ids:
                raise ApiError(404, f"No such {kind}: '{cursor}'", code="resource_missing")
            start = ids.index(cursor) + 1
        size = min(limit, self.page_size)
        return {
            "object": "list",
            "url": url,
            "has_more": start + size < len(found),
            "data": found[start : start + size],
        }

    def _store_item(
        self,
        invoice: dict[str, Any],
        amount: int,
        description: str | None,
        metadata: dict[str, str],
    ) -> dict[str, Any]:
        item = {
            "id": self._new_id("ii"),
            "object": "invoiceitem",
            "date": int(time.time()),
            "livemode": False,
            "amount": amount,
            "currency": invoice["currency"],
            "customer": invoice["customer"],
            "invoice": invoice["id"],
            "description": description,
            "metadata": metadata,
            "period": None,
            "quantity": 1,
        }
        self.items[item["id"]] = item
        return item

    def _invoice_view(self, invoice: dict[str, Any]) -> dict[str, Any]:
        total = sum(i["amount"] for i in self.items.values() if i["invoice"] == invoice["id"])
        total += self.total_skew
        credited = sum(
            note["total"] for note in self.credit_notes.values() if note["invoice"] == invoice["id"]
        )
        pre_payment = sum(
            note["total"]
            for note in self.credit_notes.values()
            if note["invoice"] == invoice["id"] and not note["out_of_band_amount"]
        )
        view = dict(invoice, subtotal=total, total=total, amount_due=total - pre_payment)
        view["credited"] = credited
        view["amount_remaining"] = max(0, view["amount_due"] - invoice["amount_paid"])
        return view

    def _customer(self, customer_id: object) -> dict[str, Any]:
        if not isinstance(customer_id, str) or not customer_id:
            raise ApiError(400, "Missing required param: customer.", param="customer")
        customer = self.customers.get(customer_id)
        if customer is None:
            raise ApiError(
                400, f"No such customer: '{customer_id}'", code="resource_missing", param="customer"
            )
        return customer

    def _invoice(self, invoice_id: str | None, param: str = "invoice") -> dict[str, Any]:
        invoice = self.invoices.get(invoice_id or "")
        if invoice is None:
            raise ApiError(
                404, f"No such invoice: '{invoice_id}'", code="resource_missing", param=param
            )
        return invoice

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):010d}"


def _route(method: str, path: str) -> tuple[str, str | None]:
    for route_method, pattern, endpoint in _ROUTES:
        match = pattern.fullmatch(path)
        if match is not None and route_method == method:
            return endpoint, match.groupdict().get("id")
    raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")


def _nested(form: MultiDict[str, str]) -> dict[str, Any]:
    """`metadata[a]=1&period[start]=2` → `{"metadata": {"a": "1"}, "period": {"start": "2"}}`."""
    params: dict[str, Any] = {}
    for name, value in form.items(multi=True):
        head, *rest = re.findall(r"[^\[\]]+", name) or [name]
        target = params
        for part in [head, *rest][:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ApiError(400, f"Invalid parameter {name}.", param=head)
        target[[head, *rest][-1]] = value
    return params


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    metadata = params.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ApiError(400, "Invalid metadata.", param="metadata")
    return dict(metadata)


def _required(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"Missing required param: {name}.", param=name)
    return value


def _integer(params: dict[str, Any], name: str) -> int:
    value = params.get(name)
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise ApiError(400, f"Invalid integer: {value}", param=name)
    return int(value)


def _boolean(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise ApiError(400, f"Invalid boolean: {value}", param=name)
    return value == "true"


def _json(status: int, body: dict[str, Any]) -> Response:
    response = Response(json.dumps(body), status=status, content_type="application/json")
    response.headers["Request-Id"] = f"req_fake{time.monotonic_ns()}"
    return response


def _error(error: ApiError) -> Response:
    entry: dict[str, Any] = {"type": error.type, "message": error.message}
    if error.code:
        entry["code"] = error.code
    if error.param:
        entry["param"] = error.param
    return _json(error.status, {"error": entry})


def _fault_response(fault: _Fault) -> Response:
    if fault.status == 429:
        error = ApiError(429, "Too many requests.", code="rate_limit")
    elif fault.status >= 500:
        error = ApiError(fault.status, "An unknown error occurred.", type_="api_error")
    else:
        error = ApiError(fault.status, "Injected refusal.")
    response = _error(error)
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(fault.retry_after)
    return response


@contextmanager
def serve(**kwargs: Any) -> Iterator[tuple[FakeStripe, str]]:
    """A fake Stripe on a free port: yields it and its base URL (`http://127.0.0.1:<port>`)."""
    fake = FakeStripe(**kwargs)
    with serve_wsgi(fake) as base_url:
        yield fake, base_url
