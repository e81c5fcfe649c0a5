"""The console: server-rendered pages for the people of the consortium, by what they do.

Each module adds its pages to the one `console` blueprint (broker/web/pages.py):
buyers (catalogue, comparison, orders, machines, usage), agencies (approvals, policy,
members, invitations, webhooks), providers (their provider, evidence, offers, machines,
usage, settlements), finance (billing runs, invoices, settlements), assessors (the evidence
queue) and admins (organizations, providers, API clients, identity providers, audit log).
"""

from __future__ import annotations

from flask import Flask

from broker.web import admin, agencies, assessors, buyers, finance, operators  # noqa: F401
from broker.web.pages import bp, init_pages


def init_console(app: Flask) -> None:
    init_pages(app)
    app.register_blueprint(bp)
