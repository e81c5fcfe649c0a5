"""Finance's console pages on the demo's closed month: invoices by period and state, the
period CSV, void, a billing run that drafts the replacement, finalizing it and downloading it,
a credit note, settlements (an operator sees their own), refused without role or CSRF token."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from babel.numbers import format_currency
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from billing.metering import period_bounds, period_of
from broker.db import Database
from broker.jobs.handlers import HANDLERS, ON_DEAD
from broker.jobs.queue import JobContext, run_pending
from broker.models import CreditNote, Invoice, InvoiceState, Provider
from tests.conftest import fetch_token
from tests.console_support import BUYER, FINANCE, OPERATOR, organization_id, sign_in, text_of

CITY = "Ville de Québec"
HEALTH_AGENCY = "Agence nationale des données de santé"


def last_period() -> str:
    return period_of(period_bounds(period_of(datetime.now(UTC)))[0] - timedelta(days=1))


def database(app: Flask) -> Database:
    db: Database = app.extensions["broker.db"]
    return db


def invoices(app: Flask, agency: str | None = None) -> list[Invoice]:
    """Last month's invoices (of `agency`), by number, drafts last."""
    with database(app).session(read_only=True) as session:
        statement = select(Invoice).where(Invoice.period == last_period())
        if agency is not None:
            statement = statement.where(Invoice.organization_id == organization_id(app, agency))
        found = list(session.scalars(statement))
        session.expunge_all()
    return sorted(found, key=lambda invoice: invoice.number or "~")


def euros(amount: Decimal, currency: str) -> str:
    return format_currency(amount, currency, locale="en")


def finance_api(app: Flask) -> tuple[FlaskClient, dict[str, str]]:
    """An API client with the demo finance client's token (as written by the seed)."""
    path = Path(app.config["INSTANCE_PATH"]) / "demo-credentials.json"
    [mine] = [c for c in json.loads(path.read_text()) if c["roles"] == ["finance"]]
    client = app.test_client()
    token = fetch_token(client, mine["client_id"], mine["client_secret"])
    return client, {"Authorization": f"Bearer {token}"}


def test_finance_lists_last_months_invoices_and_downloads_the_period_csv(
    demo_app: Flask,
) -> None:
    period = last_period()
    browser = sign_in(demo_app, FINANCE, "en")
    page = browser.get("/invoices")
    assert page.status_code == 200
    words = text_of(page)
    assert f"Invoices of {period}" in words and "Download the period CSV" in words
    issued = invoices(demo_app)
    assert sorted(i.state for i in issued) == ["finalized", "finalized", "void"]
    for invoice in issued:
        assert invoice.number in words and euros(invoice.total, invoice.currency) in words
    assert CITY in words and HEALTH_AGENCY in words
    # Filtered by state: only the void one.
    [void] = [i for i in issued if i.state is InvoiceState.VOID]
    voids = text_of(browser.get(f"/invoices?period={period}&state=void"))
    assert void.number in voids and all(i.number not in voids for i in issued if i is not void)
    # A bad filter is said by its field; the page still answers.
    bad = browser.get("/invoices?period=2026-13")
    assert bad.status_code == 422 and "There is a problem" in text_of(bad)

    csv = browser.get(f"/invoices/period.csv?period={period}")
    client, headers = finance_api(demo_app)
    api = client.get(f"/v1/invoices/export?period={period}", headers=headers)
    assert api.status_code == 200
    assert csv.status_code == 200 and csv.data == api.data
    assert csv.headers["Content-Type"] == api.headers["Content-Type"]
    assert csv.headers["Content-Disposition"] == f'attachment; filename="invoices-{period}.csv"'

    # A buyer reads no one's books here.
    buyer = sign_in(demo_app, BUYER, "en")
    refused = buyer.get("/invoices")
    assert refused.status_code == 403 and "finance" in text_of(refused)
    assert buyer.get(f"/invoices/period.csv?period={period}").status_code == 403
    assert buyer.get(f"/invoices/{void.id}").status_code == 403


def test_finance_voids_rebills_finalizes_the_draft_and_downloads_it(demo_app: Flask) -> None:
    period = last_period()
    browser = sign_in(demo_app, FINANCE, "en")
    [replaced, replacement] = [i for i in invoices(demo_app, CITY)]
    assert (replaced.state, replacement.state) == ("void", "finalized")

    # Without a reason: said by the field, nothing changed.
    refused = browser.post(f"/invoices/{replacement.id}/void", {"reason": " "})
    assert refused.status_code == 422
    assert "Reason Required." in text_of(refused)
    assert invoices(demo_app, CITY)[1].state is InvoiceState.FINALIZED
    voided = browser.post(f"/invoices/{replacement.id}/void", {"reason": "Wrong address"})
    assert voided.status_code == 303
    assert f"Invoice {replacement.number} is void." in text_of(
        browser.get(voided.headers["Location"])
    )
    assert invoices(demo_app, CITY)[1].state is InvoiceState.VOID

    # A billing run for the period drafts the replacement.
    bad = browser.post("/billing-runs", {"period": "2026-13"})
    assert bad.status_code == 422 and "Period" in text_of(bad)
    started = browser.post("/billing-runs", {"period": period})
    assert started.status_code == 303
    run_pending(JobContext(database(demo_app), demo_app.config), HANDLERS, on_dead=ON_DEAD)
    assert "succeeded" in text_of(browser.get("/billing-runs"))
    [draft] = [i for i in invoices(demo_app, CITY) if i.state is InvoiceState.DRAFT]
    listed = text_of(browser.get(f"/invoices?period={period}&state=draft"))
    assert f"Draft of {CITY}" in listed and euros(draft.total, "CAD") in listed
    shown = text_of(browser.get(f"/invoices/{draft.id}"))
    assert "Finalize this invoice" in shown and euros(draft.total, "CAD") in shown
    assert "Void this invoice" not in shown
    # Lines name the machine, its offer, provider and region; the buyer its address lines.
    assert re.search(r"\S+ — [^,\n]+, Nordet Nuagique, \S+", shown), shown
    assert "2, rue des Jardins" in shown and "G1R 4S9 Québec" in shown

    finalized = browser.post(f"/invoices/{draft.id}/finalize")
    assert finalized.status_code == 303
    [issued] = [i for i in invoices(demo_app, CITY) if i.id == draft.id]
    assert issued.state is InvoiceState.FINALIZED and issued.number
    assert f"Invoice {issued.number} is issued." in text_of(
        browser.get(finalized.headers["Location"])
    )

    pdf = browser.get(f"/invoices/{issued.id}/download/pdf")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")
    assert pdf.headers["Content-Type"] == "application/pdf"
    disposition = f'attachment; filename="invoice-{issued.number}.pdf"'
    assert pdf.headers["Content-Disposition"] == disposition
    client, headers = finance_api(demo_app)
    for fmt in ("csv", "cii"):
        mine = browser.get(f"/invoices/{issued.id}/download/{fmt}")
        api = client.get(f"/v1/invoices/{issued.id}/export?format={fmt}", headers=headers)
        assert mine.data == api.data and mine.headers["Content-Type"] == api.headers["Content-Type"]
    assert browser.get(f"/invoices/{issued.id}/download/docx").status_code == 404


def test_finance_credits_part_of_a_line(demo_app: Flask) -> None:
    browser = sign_in(demo_app, FINANCE, "en")
    [invoice] = invoices(demo_app, HEALTH_AGENCY)
    form = text_of(browser.get(f"/invoices/{invoice.id}/credit"))
    assert "Credit all that remains of every line" in form and "remain" in form

    def notes() -> int:
        with database(demo_app).session(read_only=True) as session:
            return session.scalar(select(func.count()).select_from(CreditNote)) or 0

    def credit(fields: dict[str, str], key: str | None = None) -> Any:
        """Send the form as shown once (its own key, or the key of a form sent before)."""
        once = {"idempotency_key": key or str(uuid.uuid4())}
        return browser.post(f"/invoices/{invoice.id}/credit", {**fields, **once})

    before = notes()
    too_much = credit({"reason": "Outage", "line-1": "1000000"})
    assert too_much.status_code == 409 and "There is a problem" in text_of(too_much)
    no_reason = credit({"line-1": "1.00"})
    assert no_reason.status_code == 422 and "reason: Required." in text_of(no_reason)
    assert notes() == before
    key = str(uuid.uuid4())
    issued = credit({"reason": "Outage", "line-1": "1.00"}, key)
    assert issued.status_code == 303 and notes() == before + 1
    # The same form sent again (a double click, a reload): the same credit note, not a second.
    again = credit({"reason": "Outage", "line-1": "1.00"}, key)
    assert again.status_code == 303 and again.headers["Location"] == issued.headers["Location"]
    assert notes() == before + 1
    page = text_of(browser.get(issued.headers["Location"]))
    assert "Credit note CN-" in page and "Outage" in page and euros(Decimal("1.20"), "EUR") in page


def test_an_operator_sees_only_their_providers_settlement(demo_app: Flask) -> None:
    period = last_period()
    finance = text_of(sign_in(demo_app, FINANCE, "en").get("/settlements"))
    assert f"Owed to providers for {period}" in finance
    assert "Hexagone Cloud" in finance and "Nordet Nuagique" in finance
    operator = sign_in(demo_app, OPERATOR, "en")
    mine = text_of(operator.get("/settlements"))
    assert "Hexagone Cloud" in mine and "Nordet Nuagique" not in mine
    with database(demo_app).session(read_only=True) as session:
        ids = {name: id_ for name, id_ in session.execute(select(Provider.name, Provider.id))}
    own = operator.get(f"/settlements/{ids['Hexagone Cloud']}?period={period}")
    assert own.status_code == 200 and "Settlement of Hexagone Cloud" in text_of(own)
    assert operator.get(f"/settlements/{ids['Nordet Nuagique']}?period={period}").status_code == 404
    assert operator.get(f"/settlements/{uuid.uuid4()}").status_code == 404
    assert sign_in(demo_app, BUYER, "en").get("/settlements").status_code == 403


def test_a_change_without_the_csrf_token_is_refused(demo_app: Flask) -> None:
    browser = sign_in(demo_app, FINANCE, "en")
    invoice = next(i for i in invoices(demo_app, CITY) if i.state is InvoiceState.FINALIZED)
    refused = browser.client.post(f"/invoices/{invoice.id}/void", data={"reason": "No token"})
    assert refused.status_code == 403
    assert browser.client.post("/billing-runs", data={"period": last_period()}).status_code == 403
    assert (
        next(i for i in invoices(demo_app, CITY) if i.id == invoice.id).state
        is InvoiceState.FINALIZED
    )


def test_finance_records_bank_transfers_until_the_invoice_is_paid(demo_app: Flask) -> None:
    browser = sign_in(demo_app, FINANCE, "en")
    [invoice] = invoices(demo_app, HEALTH_AGENCY)
    client, headers = finance_api(demo_app)

    def due() -> Decimal:
        listing = client.get(f"/v1/invoices/{invoice.id}/payments", headers=headers)
        return Decimal(listing.json["amount_due"])

    owed = due()
    page = text_of(browser.get(f"/invoices/{invoice.id}"))
    assert "Record a bank transfer" in page and "No transfer is recorded" in page
    assert f"Still due {euros(owed, 'EUR')}" in page
    today = datetime.now(UTC).date().isoformat()

    def transfer(amount: str, key: str | None = None) -> Any:
        fields = {"amount": amount, "received_on": today, "reference": "VIR ANDS 2030"}
        once = {"idempotency_key": key or str(uuid.uuid4())}
        return browser.post(f"/invoices/{invoice.id}/payments", {**fields, **once})

    # More than is owed: said by the field, nothing recorded.
    too_much = transfer(str(owed + Decimal("0.01")))
    assert too_much.status_code == 422
    refused = text_of(too_much)
    assert "There is a problem" in refused and f"Only {owed} EUR is owed" in refused
    assert 'id="error-amount"' in too_much.get_data(as_text=True)  # beside its field
    assert due() == owed
    # One euro, typed the French way; sent twice, recorded once.
    key = str(uuid.uuid4())
    first = transfer("1,00", key)
    assert first.status_code == 303
    assert transfer("1,00", key).headers["Location"] == first.headers["Location"]
    shown = text_of(browser.get(first.headers["Location"]))
    assert f"A transfer of {euros(Decimal('1'), 'EUR')} received on" in shown
    assert "VIR ANDS 2030" in shown and f"Still due {euros(owed - 1, 'EUR')}" in shown
    assert due() == owed - 1
    # The rest pays the invoice: no more form, in either language.
    rest = transfer(str(owed - 1))
    assert "The invoice is paid." in text_of(browser.get(rest.headers["Location"]))
    assert next(i for i in invoices(demo_app, HEALTH_AGENCY)).state is InvoiceState.PAID
    french = text_of(sign_in(demo_app, FINANCE, "fr").get(f"/invoices/{invoice.id}"))
    assert "Paiements reçus par virement" in french and "Enregistrer un virement" not in french


def test_finance_edits_an_agencys_billing_profile(demo_app: Flask) -> None:
    agency = organization_id(demo_app, HEALTH_AGENCY)
    path = f"/agencies/{agency}/billing-profile"
    client, headers = finance_api(demo_app)

    def stored() -> Any:
        return client.get(f"/v1/organizations/{agency}/billing-profile", headers=headers)

    # Found from the invoices, and from each invoice.
    browser = sign_in(demo_app, FINANCE, "en")
    [invoice] = invoices(demo_app, HEALTH_AGENCY)
    for listing in (f"/invoices?period={last_period()}", f"/invoices/{invoice.id}"):
        assert f'href="{path}"' in browser.get(listing).get_data(as_text=True)
    opened = browser.get(path)
    assert opened.status_code == 200
    page = opened.get_data(as_text=True)
    # The seeded profile, each value in its labelled field, its hint read with it.
    assert f"Billing profile of {HEALTH_AGENCY}" in text_of(opened)
    assert '<label for="field-legal_id">Legal identifier</label>' in page
    assert 'aria-describedby="hint-legal_id"' in page and "SIRET: 14 digits" in page
    for value in ("18002002600019", "DSI-CLOUD", "EJ-2026-000142", "9 rue Georges Pitard"):
        assert value in page
    assert '<option value="fr" selected>Français</option>' in page
    ticked = re.findall(r'name="(requires_[a-z_]+)" type="checkbox" value="true" checked', page)
    assert ticked == ["requires_buyer_reference", "requires_purchase_order_reference"]
    [revision] = re.findall(r'name="revision" value="(\d+)"', page)
    assert stored().headers["ETag"] == f'"v{revision}"'
    form = {
        "revision": revision,
        "legal_name": "Agence nationale des données de santé (établissement public)",
        "address": "9 rue Georges Pitard\r\nBâtiment B\r\n",
        "post_code": "75015",
        "city": "Paris",
        "country": "FR",
        "vat_rate": "20",
        "legal_id": "18002002600019",
        "language": "fr",
        "buyer_reference": "DSI-CLOUD",
        "purchase_order_reference": "EJ-2026-000142",
        "requires_buyer_reference": "true",
        "requires_purchase_order_reference": "true",
    }

    # A SIRET with spaces and four street lines: said by each field, nothing stored.
    bad = browser.post(path, {**form, "legal_id": "1800 2002 6000 19", "address": "a\nb\nc\nd"})
    assert bad.status_code == 422
    assert 'id="error-legal_id"' in bad.get_data(as_text=True)
    assert 'id="error-address"' in bad.get_data(as_text=True)
    assert "Did you mean `18002002600019`?" in text_of(bad)
    assert stored().headers["ETag"] == f'"v{revision}"'

    # A new commitment number, invoices in English, a second street line (sent as browsers
    # send a text area, CR LF): stored, and said.
    changed = {**form, "purchase_order_reference": "EJ-2027-000007", "language": "en"}
    saved = browser.post(path, changed)
    assert saved.status_code == 303
    assert f"The billing profile of {HEALTH_AGENCY} is saved." in text_of(
        browser.get(saved.headers["Location"])
    )
    profile = stored().json
    assert profile["purchase_order_reference"] == "EJ-2027-000007"
    assert profile["language"] == "en" and profile["address"] == "9 rue Georges Pitard\nBâtiment B"
    assert profile["requires_buyer_reference"] and profile["legal_id_scheme"] == "0002"

    # The form as opened before that change: refused, and the current version shown instead.
    stale = browser.post(path, {**form, "purchase_order_reference": "EJ-OLD"})
    assert stale.status_code == 412
    words = text_of(stale)
    assert "Someone changed this while you were editing" in words
    assert "EJ-2027-000007" in stale.get_data(as_text=True) and "EJ-OLD" not in words
    assert stored().json["purchase_order_reference"] == "EJ-2027-000007"

    # In French; only for an agency; not for a buyer.
    french = text_of(sign_in(demo_app, FINANCE, "fr").get(path))
    assert f"Profil de facturation – {HEALTH_AGENCY}" in french
    provider = organization_id(demo_app, "Hexagone Cloud")
    assert browser.get(f"/agencies/{provider}/billing-profile").status_code == 404
    buyer = sign_in(demo_app, BUYER, "en")
    assert buyer.get(path).status_code == 403
    assert buyer.post(path, {**changed, "revision": "2"}).status_code == 403
