"""What public buyers need on their invoices: their references (BT-10 service code, BT-13
commitment number) from their orders or their billing profile, their legal identifier and
address lines, their language, and no invoice issued that breaks an EN 16931 rule."""

from __future__ import annotations

import dataclasses
import io
import uuid
from datetime import UTC, datetime
from typing import Any

import facturx
import pytest
from lxml import etree
from pypdf import PdfReader

from billing import schematron
from broker.config import SELLER_REQUIRED, load_config, require_seller
from broker.services import invoices as invoice_service
from tests.billing_fixtures import Ledger
from tests.conftest import TEST_SELLER
from tests.helpers import problem

NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
}
AGREEMENT = "rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeAgreement"
PROFILE = {
    "legal_name": "Agence nationale des données de santé",
    "address": "9 rue Georges Pitard\nBâtiment C",
    "post_code": "75015",
    "city": "Paris",
    "country": "FR",
    "vat_rate": "20",
    "legal_id": "18002002600019",
    "buyer_reference": "DSI-CLOUD",
    "purchase_order_reference": "EJ-2030-000142",
    "language": "fr",
}


def t(day: int, hour: int = 0, month: int = 3) -> datetime:
    return datetime(2030, month, day, hour, tzinfo=UTC)


def put_profile(ledger: Ledger, body: dict[str, Any]) -> Any:
    path = f"/v1/organizations/{ledger.market.buyer.organization_id}/billing-profile"
    etag = ledger.client.get(path, headers=ledger.finance.headers).headers["ETag"]
    return ledger.client.put(path, json=body, headers={**ledger.finance.headers, "If-Match": etag})


def order(ledger: Ledger, name: str, **references: str) -> Any:
    return ledger.client.post(
        "/v1/orders",
        json={"offer_id": ledger.market.offer_id, "name": name, **references},
        headers={**ledger.market.buyer.headers, "Idempotency-Key": str(uuid.uuid4())},
    )


def cii_of(ledger: Ledger, invoice_id: str) -> etree._Element:
    xml = export(ledger, invoice_id, "cii")
    assert schematron.errors(xml) == []
    return etree.fromstring(xml)


def export(ledger: Ledger, invoice_id: str, fmt: str) -> bytes:
    response = ledger.client.get(
        f"/v1/invoices/{invoice_id}/export?format={fmt}", headers=ledger.finance.headers
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return bytes(response.data)


def texts(root: etree._Element, path: str) -> list[str]:
    return [node.text for node in root.xpath(path, namespaces=NS)]


def test_an_orders_references_reach_the_cii_and_the_profile_names_the_buyer(
    ledger: Ledger,
) -> None:
    response = put_profile(ledger, {**PROFILE, "requires_purchase_order_reference": True})
    assert response.status_code == 200, response.get_data(as_text=True)
    profile = response.json
    assert profile["language"] == "fr"
    assert profile["legal_id_scheme"] == "0002"
    # The profile requires a commitment number: its default serves an order that gives none.
    ledger.at(t(2))
    placed = order(
        ledger, "web-1", buyer_reference="SVC-42", purchase_order_reference="EJ-2030-000777"
    )
    assert placed.status_code == 201, placed.get_data(as_text=True)
    assert placed.json["buyer_reference"] == "SVC-42"
    assert placed.json["purchase_order_reference"] == "EJ-2030-000777"
    ledger.run_jobs()
    ledger.bill("2030-03", when=t(1, 1, month=4))
    invoice = ledger.invoice_of("2030-03")
    assert {
        (line["buyer_reference"], line["purchase_order_reference"]) for line in invoice["lines"]
    } == {("SVC-42", "EJ-2030-000777")}
    assert ledger.finalize(invoice["id"]).status_code == 200

    root = cii_of(ledger, invoice["id"])
    assert texts(root, f"{AGREEMENT}/ram:BuyerReference") == ["SVC-42"]  # BT-10
    assert texts(root, f"{AGREEMENT}/ram:BuyerOrderReferencedDocument/ram:IssuerAssignedID") == [
        "EJ-2030-000777"  # BT-13
    ]
    buyer = f"{AGREEMENT}/ram:BuyerTradeParty"
    assert texts(root, f"{buyer}/ram:SpecifiedLegalOrganization/ram:ID") == ["18002002600019"]
    assert texts(root, f"{buyer}/ram:PostalTradeAddress/ram:LineOne") == ["9 rue Georges Pitard"]
    assert texts(root, f"{buyer}/ram:PostalTradeAddress/ram:LineTwo") == ["Bâtiment C"]
    assert texts(root, f"{buyer}/ram:PostalTradeAddress/ram:CityName") == ["Paris"]
    seller = f"{AGREEMENT}/ram:SellerTradeParty"
    assert texts(root, f"{seller}/ram:SpecifiedTaxRegistration/ram:ID") == ["FR32123456789"]
    assert texts(root, f"{seller}/ram:SpecifiedLegalOrganization/ram:ID") == ["12345678900017"]
    # The line names the machine and its offer, with the resource's id beside.
    provider = ledger.client.get(
        f"/v1/providers/{ledger.market.provider_id}", headers=ledger.finance.headers
    ).json
    (name,) = texts(root, "//ram:SpecifiedTradeProduct/ram:Name")
    assert name.startswith("web-1 — ") and f", {provider['name']}, " in name
    # French legal mentions, for a French seller's invoice in French.
    notes = texts(root, "rsm:ExchangedDocument/ram:IncludedNote/ram:Content")
    assert any("40 €" in note for note in notes)

    # The PDF is a Factur-X in French: a PDF/A-3 holding the very CII of `format=cii`.
    cii = export(ledger, invoice["id"], "cii")
    pdf = export(ledger, invoice["id"], "pdf")
    assert facturx.get_xml_from_pdf(pdf, check_xsd=False) == ("factur-x.xml", cii)
    reader = PdfReader(io.BytesIO(pdf))
    assert reader.xmp_metadata is not None and reader.xmp_metadata.pdfaid_part == "3"
    text = " ".join(page.extract_text() for page in reader.pages)
    assert "Facture" in text and "Total TTC" in text and "EJ-2030-000777" in text


def test_a_profile_that_requires_references_refuses_an_order_without_them(
    ledger: Ledger,
) -> None:
    body = {
        **PROFILE,
        "buyer_reference": None,
        "purchase_order_reference": None,
        "requires_buyer_reference": True,
        "requires_purchase_order_reference": True,
        "language": "en",
    }
    assert put_profile(ledger, body).status_code == 200
    ledger.at(t(2))
    refused = order(ledger, "web-1", buyer_reference="SVC-42")
    assert set(problem(refused, 422)["errors"]) == {"purchase_order_reference"}
    listing = ledger.client.get("/v1/orders", headers=ledger.market.buyer.headers)
    assert listing.json["items"] == []  # nothing was ordered
    bad = put_profile(ledger, {**body, "address": "one\ntwo\nthree\nfour", "language": "de"})
    assert set(problem(bad, 422)["errors"]) == {"address", "language"}
    for siret in ("1800200260001", "18002002600019X"):  # 13 digits; a letter
        bad = put_profile(ledger, {**body, "legal_id": siret})
        assert problem(bad, 422)["errors"] == {
            "legal_id": ["A SIRET of 14 digits or a SIREN of 9 (scheme 0002)."]
        }
    other_scheme = {**body, "legal_id": "HRB12345", "legal_id_scheme": "0204"}
    assert put_profile(ledger, other_scheme).status_code == 200


def test_an_invoice_that_would_break_a_rule_is_not_issued(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.start_machine(t(2))
    ledger.bill("2030-03", when=t(1, 1, month=4))
    invoice = ledger.invoice_of("2030-03")
    issue = invoice_service.issue_document

    def with_a_broken_total(*args: Any, **kwargs: Any) -> Any:
        document = issue(*args, **kwargs)
        return dataclasses.replace(document, total=document.total + 1)

    monkeypatch.setattr(invoice_service, "issue_document", with_a_broken_total)
    body = problem(ledger.finalize(invoice["id"]), 422, "en16931_rule_broken")
    assert "BR-CO-15" in body["detail"] and "BR-CO-15" in body["errors"]
    assert ledger.invoice_of("2030-03")["state"] == "draft"  # unchanged, no number taken
    monkeypatch.undo()
    issued = ledger.finalize(invoice["id"])
    assert issued.status_code == 200 and issued.json["number"] == "2030-000001"


def test_the_broker_refuses_to_serve_without_the_sellers_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in SELLER_REQUIRED.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("BROKER_SELLER_VAT_ID", "FR32123456789")
    with pytest.raises(SystemExit) as refused:
        require_seller(load_config())
    message = str(refused.value)
    assert "BROKER_SELLER_LEGAL_ID" in message and "BROKER_SELLER_CITY" in message
    assert "BROKER_SELLER_VAT_ID" not in message
    require_seller({"SELLER": TEST_SELLER})  # complete: nothing to say
