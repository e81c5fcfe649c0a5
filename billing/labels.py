"""The words of issued documents in each language they are written in (`document.LANGUAGES`),
and how figures and dates read in it.

A plain dict of words per language (no Flask: `billing/` never imports Flask or the broker; the
console translates its own pages with Flask-Babel), and Babel's CLDR data for what every
language writes its own way: amounts (`money`: "1 234,56 €", "€1,234.56"), quantities, rates,
dates, months and country names. French is France's French (`fr_FR`); English is British
English (`en_GB`), for day-month-year dates.

- Figures are shown as issued, never rounded further: an amount keeps every decimal it has
  (at least the currency's usual two), a quantity exactly the decimals it was issued with.
- Babel writes French thousands with a narrow no-break space (U+202F) and puts a no-break
  space (U+00A0) before "€" and "%": they stay as Babel gives them (the PDF's font draws both,
  and no line breaks inside a figure).
- Dates spell the month ("6 décembre 2026", "6 December 2026"): an invoice is read by people
  on both sides of the Channel and of the Atlantic, and "06/12/2026" is 12 June to some of
  them. Machines read the ISO dates of the JSON, CSV and CII exports of the same document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal

from babel import Locale
from babel.dates import format_date, format_interval, format_skeleton
from babel.numbers import format_currency, format_decimal, format_percent

from billing.document import SIRENE, LegalId

LOCALES: dict[str, str] = {"en": "en_GB", "fr": "fr_FR"}

# Every word of the PDF; `{…}` are filled in with `str.format`.
WORDS: dict[str, dict[str, str]] = {
    "en": {
        "invoice": "Invoice",
        "credit_note": "Credit note",
        "number": "Number",
        "issue_date": "Issue date",
        "period": "Period",
        "due_date": "Due date",
        "payment_terms": "Payment terms",
        "currency": "Currency",
        "buyer_reference": "Buyer reference",
        "purchase_order_reference": "Purchase order",
        "corrects": "Corrects",
        "corrected_invoice": "invoice {number} of {date}",
        "reason": "Reason",
        "seller": "Seller",
        "buyer": "Buyer",
        "vat_id": "VAT number",
        "legal_id": "Legal identifier",
        "lines": "Lines",
        "position": "#",
        "description": "Description",
        "service_days": "Service days",
        "quantity": "Quantity",
        "unit_price": "Unit price",
        "vat": "VAT",
        "amount": "Amount",
        "adjustment": "adjustment for {period}",
        "credits_line": "Credits line {position} of invoice {number}",
        "vat_breakdown": "VAT breakdown",
        "vat_category": "VAT category",
        "rate": "Rate",
        "base": "Taxable amount",
        "vat_amount": "VAT amount",
        "subtotal": "Subtotal",
        "total": "Total",
        "no_reference": "No reference",
        "page": "page {page}/{pages}",
    },
    "fr": {
        "invoice": "Facture",
        "credit_note": "Avoir",
        "number": "Numéro",
        "issue_date": "Date d'émission",
        "period": "Période",
        "due_date": "Échéance",
        "payment_terms": "Conditions de paiement",
        "currency": "Devise",
        "buyer_reference": "Référence acheteur",
        "purchase_order_reference": "Numéro d'engagement",
        "corrects": "Facture d'origine",
        "corrected_invoice": "{number} du {date}",
        "reason": "Motif",
        "seller": "Vendeur",
        "buyer": "Acheteur",
        "vat_id": "N° TVA",
        "legal_id": "Identifiant légal",
        "lines": "Lignes",
        "position": "N°",
        "description": "Désignation",
        "service_days": "Jours de service",
        "quantity": "Quantité",
        "unit_price": "Prix unitaire HT",
        "vat": "TVA",
        "amount": "Montant HT",
        "adjustment": "régularisation de {period}",
        "credits_line": "Crédite la ligne {position} de la facture {number}",
        "vat_breakdown": "Détail de la TVA",
        "vat_category": "Catégorie de TVA",
        "rate": "Taux",
        "base": "Base HT",
        "vat_amount": "Montant de TVA",
        "subtotal": "Total HT",
        "total": "Total TTC",
        "no_reference": "Sans référence",
        "page": "page {page}/{pages}",
    },
}

# What each metric of `billing.rating.METRICS` counts, in words (a quantity's unit on a line).
METRICS: dict[str, dict[str, str]] = {
    "en": {
        "instance_hour": "instance hours",
        "vcpu_hour": "vCPU hours",
        "ram_gib_hour": "GiB-hours of memory",
        "storage_gib_month": "GiB-months of storage",
        "requests": "requests",
        "egress_gib": "GiB of outbound traffic",
    },
    "fr": {
        "instance_hour": "heures d'instance",
        "vcpu_hour": "heures de vCPU",
        "ram_gib_hour": "Gio-heures de mémoire",
        "storage_gib_month": "Gio-mois de stockage",
        "requests": "requêtes",
        "egress_gib": "Gio de trafic sortant",
    },
}

# EN 16931 VAT categories (`billing.invoicing.TAX_CATEGORIES`), as the console names them.
TAX_CATEGORIES: dict[str, dict[str, str]] = {
    "en": {
        "S": "Standard VAT rate",
        "Z": "Zero-rated",
        "E": "Exempt from VAT",
        "AE": "Reverse charge",
    },
    "fr": {
        "S": "Taux normal de TVA",
        "Z": "Taux zéro",
        "E": "Exonéré de TVA",
        "AE": "Autoliquidation",
    },
}

# The exemption reasons (BT-120) of the VATEX codes (BT-121) documents carry, in words.
EXEMPTIONS: dict[str, dict[str, str]] = {
    "en": {
        "VATEX-EU-132": "Exempt under article 132 of Council Directive 2006/112/EC",
        "VATEX-EU-AE": "Reverse charge",
    },
    "fr": {
        "VATEX-EU-132": "Exonération de TVA, article 132 de la directive 2006/112/CE",
        "VATEX-EU-AE": "Autoliquidation",
    },
}

# The CSV export's header row: in English the columns' own names (programs read them by name),
# in French words.
CSV_HEADERS: dict[str, dict[str, str]] = {
    "fr": {
        "invoice_number": "Numéro de facture",
        "invoice_period": "Période de facturation",
        "currency": "Devise",
        "buyer": "Acheteur",
        "position": "Ligne",
        "kind": "Nature",
        "period": "Période",
        "resource_id": "Identifiant de la ressource",
        "resource_name": "Nom de la ressource",
        "provider_id": "Identifiant du fournisseur",
        "metric": "Métrique",
        "quantity": "Quantité",
        "unit_price": "Prix unitaire HT",
        "amount": "Montant",
        "tax_category": "Catégorie de TVA",
        "tax_rate": "Taux de TVA",
        "service_start": "Début du service",
        "service_end": "Fin du service",
        "buyer_reference": "Référence acheteur",
        "purchase_order_reference": "Numéro d'engagement",
    },
}

# Payment terms (BT-20): due on receipt, or so many days after the issue date.
_ON_RECEIPT = {"en": "Due on receipt", "fr": "Paiement à réception"}
_NET_DAYS = {"en": "{days} days net", "fr": "Paiement à {days} jours"}


def words(language: str) -> Mapping[str, str]:
    """The words of a document written in `language` (ValueError for any other)."""
    return WORDS[_known(language)]


def _known(language: str) -> str:
    if language not in LOCALES:
        raise ValueError(f"no words for language {language!r}")
    return language


def _locale(language: str) -> str:
    return LOCALES[_known(language)]


def money(amount: Decimal, currency: str, language: str) -> str:
    """An amount in `currency` as the language writes it, every decimal it has kept (at least
    the currency's own): fr "1 234,56 €", en "€1,234.56"."""
    return format_currency(amount, currency, locale=_locale(language), decimal_quantization=False)


def quantity(value: Decimal, language: str) -> str:
    """A quantity with exactly its issued decimals (10.000 stays "10,000" in French, "10.000"
    in English) and the language's grouping of thousands."""
    exponent = value.as_tuple().exponent
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    pattern = "#,##0." + "0" * decimals if decimals else "#,##0"
    return format_decimal(value, pattern, locale=_locale(language), decimal_quantization=False)


def rate(percent: Decimal, language: str) -> str:
    """A VAT rate given in percent: fr "5,5 %", en "5.5%"."""
    return format_percent(percent / 100, locale=_locale(language), decimal_quantization=False)


def day(value: date, language: str) -> str:
    """A date, its month spelt: fr "6 décembre 2026", en "6 December 2026"."""
    return format_date(value, "long", locale=_locale(language))


def days(first: date, last: date, language: str) -> str:
    """The days from `first` to `last` included, short: fr "1–31 mars 2030", en "1 – 31 Mar
    2030"; a single day as "10 mars 2030"."""
    locale = _locale(language)
    if first == last:
        return format_skeleton("yMMMd", first, locale=locale)
    return format_interval(first, last, "yMMMd", locale=locale)


def month(period: str, language: str) -> str:
    """A billing period ("2030-03") as its month: fr "mars 2030", en "March 2030"."""
    year, number = period.split("-")
    return format_skeleton("yMMMM", date(int(year), int(number), 1), locale=_locale(language))


def payment_terms(days: int, language: str) -> str:
    """The payment terms (BT-20) of an invoice due `days` after its issue: fr "Paiement à 30
    jours", en "30 days net"; 0 days: due on receipt."""
    if days == 0:
        return _ON_RECEIPT[_known(language)]
    return _NET_DAYS[_known(language)].format(days=days)


def metric(code: str, language: str) -> str:
    """What a metric counts, in words ("heures d'instance"); an unknown metric as its code."""
    return METRICS[_known(language)].get(code, code)


def tax_category(code: str, language: str) -> str:
    """An EN 16931 VAT category in words ("Autoliquidation"); an unknown one as its code."""
    return TAX_CATEGORIES[_known(language)].get(code, code)


def exemption(code: str | None, reason: str | None, language: str) -> str | None:
    """Why a VAT category applies no VAT, in words: the reason of its VATEX code in the
    language, else the reason as issued; None when there is neither."""
    return EXEMPTIONS[_known(language)].get(code or "", reason) or None


def csv_headers(columns: Sequence[str], language: str) -> list[str]:
    """The CSV header row of `columns` in `language` (English: the columns' names)."""
    return [CSV_HEADERS.get(_known(language), {}).get(column, column) for column in columns]


def country(code: str, language: str) -> str:
    """An ISO 3166 country code as the country's name ("Allemagne"); unknown: the code."""
    name: str = Locale.parse(_locale(language)).territories.get(code.upper(), code)
    return name


def legal_id_label(legal_id: LegalId, language: str) -> str:
    """What a legal identifier is called on the document: a SIRENE number (scheme 0002) is
    a SIRET (14 digits, an establishment) or a SIREN (9 digits, the company), in both
    languages; another is a legal identifier, with its ISO/IEC 6523 scheme when it has one."""
    if legal_id.scheme == SIRENE:
        return "SIREN" if len(legal_id.value.replace(" ", "")) == 9 else "SIRET"
    label = words(language)["legal_id"]
    return f"{label} ({legal_id.scheme})" if legal_id.scheme else label
