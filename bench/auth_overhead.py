"""What authentication and the API conventions cost per request.

Seeds an embedded SQLite database (or `BENCH_DATABASE_URL` when set: an empty database,
migrated here) with 200 organizations, then measures, in-process through
the WSGI test client (no network), requests per second and p50/p99 latency for:

- a bare Flask endpoint returning a small JSON document (the floor on this machine),
- `GET /healthz` through the full broker app (logging, metrics, request ids),
- `GET /v1/me` with a bearer token: the fixed cost of an authenticated request (JWT
  verification, the client's standing, rate limits) and little else,
- `GET /v1/organizations?limit=50` with a bearer token (JWT verification, a keyset query,
  serialization of 50 items),
- `POST /oauth/token` (client lookup, secret check, RS256 signing).

Prints figures only; nothing here is a test. Run: `.venv/bin/python bench/auth_overhead.py`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import COUNTED_NOT_LIMITED, SECONDS, bare_flask_client, measure  # noqa: E402

from broker import create_app  # noqa: E402
from broker.db import Database  # noqa: E402
from broker.migrate import upgrade  # noqa: E402
from broker.models import OrganizationKind, Role  # noqa: E402
from broker.services import organizations  # noqa: E402


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    url = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{workdir / 'broker.db'}"
    upgrade(url)
    database = Database(url)
    with database.transaction() as session:
        for number in range(200):
            organizations.create_organization(
                session, None, name=f"Agency {number:03d}", kind=OrganizationKind.AGENCY
            )
        consortium = organizations.create_organization(
            session, None, name="Consortium", kind=OrganizationKind.CONSORTIUM
        )
        issued = organizations.create_client(
            session, None, consortium.id, name="bench", roles=[Role.ADMIN]
        )
        client_id, secret = issued.client.client_id, issued.secret
    database.dispose()

    bare_client = bare_flask_client()
    app = create_app(
        {
            "DATABASE_URL": url,
            "INSTANCE_PATH": str(workdir),
            "LOG_LEVEL": "WARNING",
            **COUNTED_NOT_LIMITED,
        }
    )
    client = app.test_client()
    form = {"grant_type": "client_credentials"}
    token = client.post("/oauth/token", data=form, auth=(client_id, secret)).json["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    kind = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"python {sys.version.split()[0]}, {kind}, in-process, {SECONDS:.0f} s per line")
    floor = measure("bare Flask JSON endpoint", lambda: bare_client.get("/ping").status_code)
    rows = [
        ("GET /healthz (broker app)", lambda: client.get("/healthz").status_code),
        # The fixed cost of an authenticated request: token, client standing, rate limits.
        ("GET /v1/me (token)", lambda: client.get("/v1/me", headers=headers).status_code),
        (
            "GET /v1/organizations?limit=50 (token)",
            lambda: client.get("/v1/organizations?limit=50", headers=headers).status_code,
        ),
        (
            "POST /oauth/token",
            lambda: client.post("/oauth/token", data=form, auth=(client_id, secret)).status_code,
        ),
    ]
    for name, call in rows:
        rate = measure(name, call)
        print(f"{'':<44} {floor / rate:9.1f}x the bare endpoint's time")


if __name__ == "__main__":
    main()
