"""Every `curl` example of the README runs green against the demo of a fresh `make run`.

The README's shell blocks that call `curl` are taken from the file as they are and run, in
order, in one `bash` (as a newcomer pastes them into one terminal), against the real `broker
serve` started on a fresh instance. `curl` fails on any HTTP error (`--fail-with-body`) and the
script stops at the first failing command (`set -euo pipefail`), so an example that does not
work on the demo fails this test with its answer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving import (
    PROJECT_ROOT,
    kill_leftovers,
    start,
    stop,
    wait_until_up,
)

pytestmark = pytest.mark.slow

README = PROJECT_ROOT / "README.md"
SCRIPT_TIMEOUT = 300
PRELUDE = """\
set -euo pipefail
curl() { command curl --fail-with-body --show-error "$@"; }
"""


def curl_examples(text: str) -> list[str]:
    """The README's `sh` blocks that call curl, in order."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return [block for block in blocks if re.search(r"\bcurl\b", block)]


def downloaded_pdf(workdir: Path) -> str:
    (pdf,) = workdir.glob("invoice-*.pdf")
    return pdf.name


def test_the_readme_has_curl_examples_for_each_part_of_the_api() -> None:
    examples = "\n".join(curl_examples(README.read_text()))
    for path in (
        "/oauth/token", "/v1/offers", "/v1/quotes", "/evidence", "/v1/trusted-issuers",
        "/v1/orders", "/v1/resources", "/v1/usage", "/v1/billing-runs", "/finalize",
        "/export", "/credit-notes", "/void", "/v1/settlements", "/sync", "/policy",
        "kind=volume", "kind=object_storage", "/secret", '"resize"', '"attach"',
        '"set_retention"',
    ):  # fmt: skip
        assert path in examples, path


def test_every_curl_example_of_the_readme_runs_green_against_the_demo(
    serve_env: dict[str, str],
    tmp_path: Path,
) -> None:
    script = PRELUDE + "\n".join(curl_examples(README.read_text()))
    workdir = tmp_path / "newcomer"
    workdir.mkdir()
    # The README speaks of `.venv/bin/…` in the project's directory.
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    server = start(serve_env, tmp_path, 1, f"http://127.0.0.1:{serve_env['PORT']}")
    try:
        wait_until_up(server)
        run = subprocess.run(
            ["bash", "-c", script],
            cwd=workdir,
            env={**serve_env, "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
        )
        assert run.returncode == 0, (
            f"exit {run.returncode}\n--- stderr\n{run.stderr[-3000:]}\n"
            f"--- stdout\n{run.stdout[-3000:]}\n{server.diagnostics()}"
        )
        # What the examples download: an invoice in every format and a period's CSV.
        downloaded = sorted(path.suffix for path in workdir.glob("invoice-*"))
        assert downloaded == [".csv", ".json", ".pdf", ".xml"], downloaded
        assert list(workdir.glob("invoices-*.csv"))
        assert (workdir / downloaded_pdf(workdir)).read_bytes().startswith(b"%PDF-")
        assert stop(server, "SIGTERM") == 0
    finally:
        kill_leftovers(server)
