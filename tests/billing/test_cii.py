"""The EN 16931 CII export of a document: valid against the Factur-X XSD, the document's own
figures (never recomputed), and the same bytes every time. The fixtures are stored snapshots as
the broker froze them before parties were structured (their address one text), read through
`Document.from_snapshot`; `structured()` is a document as issued today."""

from __future__ import annotations

import dataclasses
from typing import Any

import facturx
import pytest
from lxml import etree

from billing import cii
from billing.document import EXEMPTIONS, Document
from tests.billing.test_pdf import BUYER as BUYER_PARTY
from tests.billing.test_pdf import SELLER as SELLER_PARTY

NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
    "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
    "qdt": "urn:un:unece:uncefact:data:standard:QualifiedDataType:100",
}
SETTLEMENT = "rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeSettlement"
SUMMATION = f"{SETTLEMENT}/ram:SpecifiedTradeSettlementHeaderMonetarySummation"
SELLER = {
    "name": "Sovereign Cloud Consortium",
    "address": "12 rue de l'Arsenal, 75004 Paris",
    "country": "FR",
    "vat_id": "FR32123456789",
}
BUYER = {
    "organization_id": "0d5b7c1e-8a44-4f2e-9d6a-3c1f0e2b7a90",
    "name": "ANDS",
    "legal_name": "Agence nationale des données souveraines",
    "address": "1 avenue de Ségur, 75007 Paris",
    "country": "FR",
    "vat_id": "FR90987654321",
}


def line(position: int, metric: str, amount: str, category: str, rate: str, **extra: Any) -> dict:
    return {
        "position": position,
        "kind": "usage",
        "period": "2030-03",
        "resource_id": f"5c1e0000-0000-4000-8000-{position:012d}",
        "provider_id": "a3f04b2c-6d1e-4f7a-8b9c-0d1e2f3a4b5c",
        "metric": metric,
        "quantity": "234.633333",
        "unit_price": "0.05",
        "amount": amount,
        "tax_category": category,
        "tax_rate": rate,
        "service_start": "2030-03-10T13:37:00Z",
        "service_end": "2030-03-20T08:15:00Z",
        **extra,
    }


def invoice(**changes: Any) -> dict[str, Any]:
    """An invoice with S 20 %, Z and E lines, one of them an adjustment of February."""
    document = {
        "document_type": "invoice",
        "id": "7b0c2f3e-0f7e-4a8e-9a57-2d0f3a1b9c11",
        "number": "2030-000001",
        "issued_at": "2030-04-01T00:05:00Z",
        "period": "2030-03",
        "period_start": "2030-03-01T00:00:00Z",
        "period_end": "2030-04-01T00:00:00Z",
        "currency": "EUR",
        "seller": dict(SELLER),
        "buyer": dict(BUYER),
        "lines": [
            line(1, "instance_hour", "11.73", "S", "20"),
            line(2, "vcpu_hour", "4.27", "S", "20"),
            line(
                3,
                "egress_gib",
                "0.13",
                "Z",
                "0",
                kind="adjustment",
                period="2030-02",
                quantity="12.5",
                unit_price="0.01",
                service_start="2030-02-01T00:00:00Z",
                service_end="2030-03-01T00:00:00Z",
            ),
            line(4, "storage_gib_month", "3.10", "E", "0", quantity="31", unit_price="0.1"),
        ],
        "taxes": [
            {"category": "S", "rate": "20", "base": "16.00", "amount": "3.20"},
            {"category": "Z", "rate": "0", "base": "0.13", "amount": "0.00"},
            {"category": "E", "rate": "0", "base": "3.10", "amount": "0.00"},
        ],
        "subtotal": "19.23",
        "tax": "3.20",
        "total": "22.43",
    }
    return {**document, **changes}


def credit_note() -> dict[str, Any]:
    """A credit note of part of line 1 of the invoice, to a reverse-charged buyer."""
    return invoice(
        document_type="credit_note",
        id="1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b",
        number="CN-2030-000001",
        issued_at="2030-04-12T09:30:00Z",
        corrects={
            "id": "7b0c2f3e-0f7e-4a8e-9a57-2d0f3a1b9c11",
            "number": "2030-000001",
            "issued_at": "2030-04-01T00:05:00Z",
        },
        reason="Machine billed during a provider outage",
        lines=[line(1, "instance_hour", "5.00", "AE", "0", quantity="100", credits_position=1)],
        taxes=[{"category": "AE", "rate": "0", "base": "5.00", "amount": "0.00"}],
        subtotal="5.00",
        tax="0.00",
        total="5.00",
    )


def jpy_invoice() -> dict[str, Any]:
    return invoice(
        number="2030-000002",
        currency="JPY",
        lines=[line(1, "instance_hour", "1173", "S", "10", unit_price="5")],
        taxes=[{"category": "S", "rate": "10", "base": "1173", "amount": "117"}],
        subtotal="1173",
        tax="117",
        total="1290",
    )


def to_cii(snapshot: dict[str, Any]) -> bytes:
    return cii.to_cii(Document.from_snapshot(snapshot))


def structured() -> Document:
    """An invoice as issued today: parties with address lines, post code, city and legal
    ids, the buyer's references, lines naming their resource, French legal mentions."""
    base = Document.from_snapshot(invoice())
    lines = tuple(
        dataclasses.replace(
            line,
            resource_name=f"web-{line.position}",
            offer_name="Small 2 vCPU",
            provider_name="Hexagone Cloud",
            region="fr-par-1",
            buyer_reference="DSI-CLOUD",
            purchase_order_reference="EJ-2030-42",
        )
        for line in base.lines
    )
    return dataclasses.replace(
        base,
        language="fr",
        seller=SELLER_PARTY,
        buyer=BUYER_PARTY,
        lines=lines,
        buyer_reference="DSI-CLOUD",
        purchase_order_reference="EJ-2030-42",
        legal_mentions=("Pas d'escompte pour paiement anticipé.", "Indemnité : 40 €."),
        payment_terms="Paiement à 30 jours",
    )


def parsed(document: dict[str, Any] | Document) -> etree._Element:
    xml = cii.to_cii(document) if isinstance(document, Document) else to_cii(document)
    assert facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931")
    return etree.fromstring(xml)


def texts(root: etree._Element, path: str) -> list[str]:
    return [node.text for node in root.xpath(path, namespaces=NS)]


def text(root: etree._Element, path: str) -> str:
    (value,) = texts(root, path)
    return value


def vat_breakdown(root: etree._Element) -> list[dict[str, str | None]]:
    rows = root.xpath(f"{SETTLEMENT}/ram:ApplicableTradeTax", namespaces=NS)
    return [
        {
            "category": row.findtext("ram:CategoryCode", namespaces=NS),
            "rate": row.findtext("ram:RateApplicablePercent", namespaces=NS),
            "base": row.findtext("ram:BasisAmount", namespaces=NS),
            "amount": row.findtext("ram:CalculatedAmount", namespaces=NS),
            "reason": row.findtext("ram:ExemptionReason", namespaces=NS),
            "code": row.findtext("ram:ExemptionReasonCode", namespaces=NS),
        }
        for row in rows
    ]


def totals(root: etree._Element) -> dict[str, str]:
    names = ("LineTotalAmount", "TaxBasisTotalAmount", "TaxTotalAmount", "GrandTotalAmount")
    figures = {name: text(root, f"{SUMMATION}/ram:{name}") for name in names}
    figures["DuePayableAmount"] = text(root, f"{SUMMATION}/ram:DuePayableAmount")
    return figures


def expected_totals(document: dict[str, Any]) -> dict[str, str]:
    return {
        "LineTotalAmount": document["subtotal"],
        "TaxBasisTotalAmount": document["subtotal"],
        "TaxTotalAmount": document["tax"],
        "GrandTotalAmount": document["total"],
        "DuePayableAmount": document["total"],
    }


def test_an_invoice_is_valid_cii_with_the_snapshots_own_figures() -> None:
    document = invoice()
    root = parsed(document)

    assert text(root, "rsm:ExchangedDocument/ram:TypeCode") == "380"
    assert text(root, "rsm:ExchangedDocument/ram:ID") == "2030-000001"
    assert text(root, "rsm:ExchangedDocument/ram:IssueDateTime/udt:DateTimeString") == "20300401"
    assert texts(root, f"{SETTLEMENT}/ram:InvoiceReferencedDocument") == []
    assert vat_breakdown(root) == [
        {"category": "S", "rate": "20", "base": "16.00", "amount": "3.20", **NO_REASON},
        {"category": "Z", "rate": "0", "base": "0.13", "amount": "0.00", **NO_REASON},
        {
            "category": "E",
            "rate": "0",
            "base": "3.10",
            "amount": "0.00",
            "reason": EXEMPTIONS["E"][1],
            "code": "VATEX-EU-132",
        },
    ]
    assert totals(root) == expected_totals(document)
    currency = root.xpath(f"{SUMMATION}/ram:TaxTotalAmount/@currencyID", namespaces=NS)
    assert currency == ["EUR"] == texts(root, f"{SETTLEMENT}/ram:InvoiceCurrencyCode")
    # The invoicing period ends on its last day, the day before the exclusive period_end.
    period = f"{SETTLEMENT}/ram:BillingSpecifiedPeriod"
    assert text(root, f"{period}/ram:StartDateTime/udt:DateTimeString") == "20300301"
    assert text(root, f"{period}/ram:EndDateTime/udt:DateTimeString") == "20300331"


def test_every_snapshot_line_is_a_cii_line_with_its_amount_unit_and_vat() -> None:
    document = invoice()
    root = parsed(document)
    items = root.xpath("//ram:IncludedSupplyChainTradeLineItem", namespaces=NS)
    assert len(items) == len(document["lines"])
    for item, source in zip(items, document["lines"], strict=True):

        def at(path: str, item: etree._Element = item) -> str:
            (value,) = item.xpath(path, namespaces=NS)
            return str(value)

        assert at("ram:AssociatedDocumentLineDocument/ram:LineID/text()") == str(source["position"])
        delivery = "ram:SpecifiedLineTradeDelivery/ram:BilledQuantity"
        assert at(f"{delivery}/text()") == source["quantity"]
        price = "ram:SpecifiedLineTradeAgreement/ram:NetPriceProductTradePrice/ram:ChargeAmount"
        assert at(f"{price}/text()") == source["unit_price"]
        settlement = "ram:SpecifiedLineTradeSettlement"
        summation = f"{settlement}/ram:SpecifiedTradeSettlementLineMonetarySummation"
        assert at(f"{summation}/ram:LineTotalAmount/text()") == source["amount"]
        assert (
            at(f"{settlement}/ram:ApplicableTradeTax/ram:CategoryCode/text()")
            == (source["tax_category"])
        )
        assert (
            at(f"{settlement}/ram:ApplicableTradeTax/ram:RateApplicablePercent/text()")
            == (source["tax_rate"])
        )
    # Instance and vCPU hours are hours; egress GiB and storage GiB-months are counted.
    units = root.xpath("//ram:BilledQuantity/@unitCode", namespaces=NS)
    assert units == ["HUR", "HUR", "C62", "C62"]
    names = texts(root, "//ram:SpecifiedTradeProduct/ram:Name")
    # A snapshot frozen before lines named their resource names it by its id.
    assert names[0] == "5c1e0000-0000-4000-8000-000000000001 — instance_hour, 2030-03"
    assert names[2].endswith(", adjustment for 2030-02")
    # The February adjustment's service days: its last day is the 28th.
    ends = texts(
        root,
        "//ram:SpecifiedLineTradeSettlement/ram:BillingSpecifiedPeriod"
        "/ram:EndDateTime/udt:DateTimeString",
    )
    assert ends == ["20300320", "20300320", "20300228", "20300320"]


def test_seller_and_buyer_carry_names_address_country_and_vat_ids() -> None:
    root = parsed(invoice())
    agreement = "rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeAgreement"
    seller, buyer = f"{agreement}/ram:SellerTradeParty", f"{agreement}/ram:BuyerTradeParty"
    assert text(root, f"{seller}/ram:Name") == SELLER["name"]
    assert text(root, f"{seller}/ram:PostalTradeAddress/ram:LineOne") == SELLER["address"]
    assert text(root, f"{seller}/ram:PostalTradeAddress/ram:CountryID") == "FR"
    assert (
        text(root, f"{seller}/ram:SpecifiedTaxRegistration/ram:ID[@schemeID='VA']")
        == (SELLER["vat_id"])
    )
    assert text(root, f"{buyer}/ram:Name") == BUYER["legal_name"]
    assert text(root, f"{buyer}/ram:SpecifiedLegalOrganization/ram:TradingBusinessName") == "ANDS"
    assert text(root, f"{buyer}/ram:PostalTradeAddress/ram:LineOne") == BUYER["address"]
    assert text(root, f"{buyer}/ram:SpecifiedTaxRegistration/ram:ID") == BUYER["vat_id"]


def test_absent_vat_ids_and_an_empty_seller_address_are_left_out() -> None:
    document = invoice(
        seller={**SELLER, "address": "", "vat_id": ""},
        buyer={**BUYER, "vat_id": None, "legal_name": "Ville de Québec", "country": "CA"},
    )
    root = parsed(document)
    agreement = "rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeAgreement"
    assert texts(root, f"{agreement}//ram:SpecifiedTaxRegistration/ram:ID") == []
    assert texts(root, f"{agreement}/ram:SellerTradeParty/ram:PostalTradeAddress/*") == ["FR"]
    assert text(root, f"{agreement}/ram:BuyerTradeParty/ram:Name") == "Ville de Québec"


def test_a_credit_note_is_381_and_references_the_invoice_it_corrects() -> None:
    document = credit_note()
    root = parsed(document)

    assert text(root, "rsm:ExchangedDocument/ram:TypeCode") == "381"
    assert text(root, "rsm:ExchangedDocument/ram:ID") == "CN-2030-000001"
    assert text(root, "rsm:ExchangedDocument/ram:IssueDateTime/udt:DateTimeString") == "20300412"
    assert text(root, "rsm:ExchangedDocument/ram:IncludedNote/ram:Content") == document["reason"]
    reference = f"{SETTLEMENT}/ram:InvoiceReferencedDocument"
    assert text(root, f"{reference}/ram:IssuerAssignedID") == "2030-000001"  # BT-25
    assert text(root, f"{reference}/ram:FormattedIssueDateTime/qdt:DateTimeString") == (
        "20300401"  # BT-26
    )
    assert vat_breakdown(root) == [
        {
            "category": "AE",
            "rate": "0",
            "base": "5.00",
            "amount": "0.00",
            "reason": "Reverse charge",
            "code": "VATEX-EU-AE",
        }
    ]
    assert totals(root) == expected_totals(document)
    assert texts(root, "//ram:AssociatedDocumentLineDocument/ram:IncludedNote/ram:Content") == [
        "Credits line 1 of invoice 2030-000001"
    ]


def test_a_yen_invoice_keeps_its_whole_amounts() -> None:
    document = jpy_invoice()
    root = parsed(document)
    assert vat_breakdown(root) == [
        {"category": "S", "rate": "10", "base": "1173", "amount": "117", **NO_REASON}
    ]
    assert totals(root) == expected_totals(document)
    assert texts(root, f"{SETTLEMENT}/ram:InvoiceCurrencyCode") == ["JPY"]


@pytest.mark.parametrize("make", [invoice, credit_note, jpy_invoice])
def test_the_same_snapshot_gives_the_same_bytes(make: Any) -> None:
    first = to_cii(make())
    assert to_cii(make()) == first
    assert b"xsi:nil" not in first


def test_an_unknown_document_type_or_language_is_refused() -> None:
    with pytest.raises(ValueError, match="document type"):
        to_cii(invoice(document_type="proforma"))
    with pytest.raises(ValueError, match="language"):
        to_cii(invoice(language="de"))


def test_a_document_survives_its_snapshot_form() -> None:
    document = structured()
    assert Document.from_snapshot(document.to_snapshot()) == document
    # Figures keep the decimals they were issued with.
    assert document.to_snapshot()["lines"][0]["amount"] == "11.73"


def test_parties_references_line_ids_and_legal_mentions_of_an_invoice_as_issued_today() -> None:
    root = parsed(structured())
    agreement = "rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeAgreement"
    seller, buyer = f"{agreement}/ram:SellerTradeParty", f"{agreement}/ram:BuyerTradeParty"
    address = f"{seller}/ram:PostalTradeAddress"
    assert text(root, f"{address}/ram:LineOne") == "12 rue de l'Arsenal"
    assert text(root, f"{address}/ram:LineTwo") == "Bâtiment B"
    assert text(root, f"{address}/ram:PostcodeCode") == "75004"
    assert text(root, f"{address}/ram:CityName") == "Paris"
    legal = f"{buyer}/ram:SpecifiedLegalOrganization/ram:ID"
    assert text(root, legal) == "18002002600019"  # BT-47
    assert root.xpath(f"{legal}/@schemeID", namespaces=NS) == ["0002"]
    assert text(root, f"{seller}/ram:SpecifiedLegalOrganization/ram:ID") == "12345678900017"
    assert text(root, f"{agreement}/ram:BuyerReference") == "DSI-CLOUD"  # BT-10
    assert (
        text(root, f"{agreement}/ram:BuyerOrderReferencedDocument/ram:IssuerAssignedID")
        == "EJ-2030-42"  # BT-13
    )
    names = texts(root, "//ram:SpecifiedTradeProduct/ram:Name")
    assert names[0] == "web-1 — Small 2 vCPU, Hexagone Cloud, fr-par-1 — instance_hour, 2030-03"
    ids = texts(
        root,
        "//ram:SpecifiedLineTradeSettlement/ram:AdditionalReferencedDocument/ram:IssuerAssignedID",
    )
    assert ids[0] == "5c1e0000-0000-4000-8000-000000000001"  # BT-128
    assert texts(root, "rsm:ExchangedDocument/ram:IncludedNote/ram:Content") == [
        "Pas d'escompte pour paiement anticipé.",
        "Indemnité : 40 €.",
    ]
    assert (
        text(root, f"{SETTLEMENT}/ram:SpecifiedTradePaymentTerms/ram:Description")
        == "Paiement à 30 jours"
    )


NO_REASON = {"reason": None, "code": None}


def test_a_snapshot_without_a_document_type_is_an_invoice() -> None:
    document = invoice()
    del document["document_type"]
    assert text(parsed(document), "rsm:ExchangedDocument/ram:TypeCode") == "380"
