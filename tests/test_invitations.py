"""Invitations by e-mail: people asked to join an organization with roles.

Done when: admins invite into any organization and an agency's approvers into their own (a
buyer is 403, another agency 404), with the roles the organization's kind allows (others 422
`role_not_allowed`); the link is in the answer once (`Cache-Control: no-store`), its token
stored only as a SHA-256 and never in a listing, the audit log or a job's payload; a new
invitation of the same address (any case) revokes the pending one; `by_token` refuses an
unknown token (404) and a used, revoked or expired one (410 with its code);
`accept_into_membership` gives the roles once; and with SMTP configured the e-mail reaches a
local `aiosmtpd` server, French then English, with the link — an unreachable server fails
only the job (retried), a refusal for good makes it dead, a revoked invitation is not sent.

Time never runs ahead of real time: an invitation that must be expired is made in the past
(`app.config["CLOCK"]`).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from broker.db import Database
from broker.errors import NotFound
from broker.jobs.handlers import HANDLERS
from broker.jobs.queue import JobContext, run_pending
from broker.models import AuditEvent, Invitation, Job, JobState, Membership, Organization, User
from broker.services import invitations
from tests.conftest import ApiUser, MakeUser
from tests.helpers import problem
from tests.serving import free_port

JOB_HANDLERS = HANDLERS
WEEK = timedelta(hours=invitations.DEFAULT_TTL_HOURS)


@pytest.fixture
def approver(make_user: MakeUser) -> ApiUser:
    return make_user("agency", ["approver"])


class Inbox:
    """An aiosmtpd handler keeping what it is sent; recipients in `refuse` get a 550."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted"


@pytest.fixture
def smtp(app: Flask) -> Iterator[Inbox]:
    """A local SMTP server the app sends to."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    app.config["SMTP_URL"] = f"smtp://127.0.0.1:{port}"
    app.config["SMTP_FROM"] = "invitations@broker.example"
    try:
        yield inbox
    finally:
        controller.stop()


def invite(
    client: FlaskClient,
    user: ApiUser,
    organization_id: str,
    email_address: str = "Jeanne.Martin@Agence.gouv.fr",
    roles: list[str] | None = None,
) -> Any:
    return client.post(
        f"/v1/organizations/{organization_id}/invitations",
        json={"email": email_address, "roles": roles or ["buyer"]},
        headers=user.headers,
    )


def token_of(link: str) -> str:
    return link.rsplit("/", 1)[1]


def run_jobs(app: Flask, db: Database) -> int:
    return run_pending(JobContext(db, app.config), JOB_HANDLERS)


def make_person(db: Database, address: str = "jeanne.martin@agence.gouv.fr") -> uuid.UUID:
    with db.transaction() as session:
        user = User(
            id=uuid.uuid4(),
            email=address,
            email_key=invitations.email_key(address),
            display_name="Jeanne Martin",
        )
        session.add(user)
        return user.id


def listing(client: FlaskClient, user: ApiUser, organization_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/organizations/{organization_id}/invitations", headers=user.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(response.json["items"])


# Who invites whom, with which roles ---------------------------------------------------------


def test_an_admin_invites_and_the_link_is_shown_once(
    app: Flask, client: FlaskClient, db: Database, admin: ApiUser, approver: ApiUser
) -> None:
    before = datetime.now(UTC)
    response = invite(client, admin, approver.organization_id, roles=["approver", "buyer"])
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert body["email"] == "Jeanne.Martin@Agence.gouv.fr"
    assert body["roles"] == ["approver", "buyer"]
    assert body["state"] == "pending"
    assert body["emailed"] is False  # no SMTP configured: the inviter passes the link on
    assert body["link"].startswith(f"{app.config['OAUTH_ISSUER']}/invitations/")
    token = token_of(body["link"])
    assert len(token) == 43  # 32 random bytes, url-safe base64
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + WEEK <= expires <= datetime.now(UTC) + WEEK

    with db.session(read_only=True) as session:
        row = session.get(Invitation, uuid.UUID(body["id"]))
        assert row is not None
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert row.email_key == "jeanne.martin@agence.gouv.fr"
        assert row.invited_by == admin.client_id
        events = session.scalars(select(AuditEvent).where(AuditEvent.object_id == body["id"]))
        logged = json.dumps([[event.action, event.after] for event in events])
        assert session.scalar(select(Job).where(Job.kind == invitations.JOB_KIND)) is None
    assert '"invitation.created"' in logged
    assert token not in logged and row.token_hash not in logged

    listed = listing(client, admin, approver.organization_id)
    assert [item["id"] for item in listed] == [body["id"]]
    assert "link" not in listed[0] and "token_hash" not in listed[0]
    assert token not in json.dumps(listed)


def test_an_approver_invites_into_their_own_agency_with_its_roles_only(
    client: FlaskClient, approver: ApiUser, make_user: MakeUser
) -> None:
    ok = invite(client, approver, approver.organization_id, roles=["buyer", "approver"])
    assert ok.status_code == 201, ok.get_data(as_text=True)

    refused = problem(
        invite(client, approver, approver.organization_id, roles=["buyer", "admin"]),
        422,
        "role_not_allowed",
    )
    assert "admin" in refused["errors"]["roles"][0]
    assert "approver, buyer" in refused["detail"]

    other = make_user("agency", ["approver"])
    problem(invite(client, approver, other.organization_id), 404, "not_found")
    buyer = make_user("agency", ["buyer"], organization_id=approver.organization_id)
    problem(invite(client, buyer, approver.organization_id), 403, "forbidden")
    problem(
        client.get(
            f"/v1/organizations/{approver.organization_id}/invitations", headers=buyer.headers
        ),
        403,
    )
    problem(
        client.get(
            f"/v1/organizations/{other.organization_id}/invitations", headers=approver.headers
        ),
        404,
    )
    assert len(listing(client, approver, approver.organization_id)) == 1


def test_roles_must_fit_the_organizations_kind(client: FlaskClient, admin: ApiUser) -> None:
    problem(invite(client, admin, admin.organization_id, roles=["buyer"]), 422, "role_not_allowed")
    ok = invite(client, admin, admin.organization_id, roles=["finance", "admin"])
    assert ok.status_code == 201
    assert ok.json["roles"] == ["admin", "finance"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not an address", "roles": ["buyer"]}, "email"),
        ({"email": "a@b.example", "roles": []}, "roles"),
        ({"email": "a@b.example", "roles": ["king"]}, "roles"),
        ({"email": "a@b.example"}, "roles"),
        ({"email": "a@b.example", "roles": ["buyer"], "token": "mine"}, "token"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    client: FlaskClient, approver: ApiUser, body: dict[str, Any], field: str
) -> None:
    response = client.post(
        f"/v1/organizations/{approver.organization_id}/invitations",
        json=body,
        headers=approver.headers,
    )
    errors = problem(response, 422)["errors"]
    assert {key.split(".")[0] for key in errors} == {field}
    assert listing(client, approver, approver.organization_id) == []


# One pending invitation per address, revocation ------------------------------------------------


def test_a_new_invitation_revokes_the_pending_one(
    client: FlaskClient, db: Database, approver: ApiUser
) -> None:
    first = invite(client, approver, approver.organization_id, "jeanne@agence.gouv.fr")
    second = invite(
        client, approver, approver.organization_id, "JEANNE@Agence.Gouv.FR", ["approver"]
    )
    assert second.status_code == 201
    states = {
        item["id"]: item["state"] for item in listing(client, approver, approver.organization_id)
    }
    assert states == {first.json["id"]: "revoked", second.json["id"]: "pending"}
    assert second.json["email"] == "JEANNE@Agence.Gouv.FR"  # its case kept, for sending

    with db.session(read_only=True) as session:
        now = datetime.now(UTC)
        with pytest.raises(invitations.InvitationGone) as gone:
            invitations.by_token(session, token_of(first.json["link"]), now)
        assert (gone.value.status, gone.value.code) == (410, "invitation_revoked")
        found = invitations.by_token(session, token_of(second.json["link"]), now)
        assert found.roles == ["approver"]
        assert [i.id for i in invitations.pending_for(session, "jeanne@agence.gouv.fr", now)] == [
            found.id
        ]


def test_revoking_by_the_api(
    client: FlaskClient, db: Database, approver: ApiUser, make_user: MakeUser
) -> None:
    created = invite(client, approver, approver.organization_id).json
    path = f"/v1/organizations/{approver.organization_id}/invitations/{created['id']}/revoke"

    other = make_user("agency", ["approver"])
    problem(client.post(path, headers=other.headers), 404)  # another agency's approver
    foreign = f"/v1/organizations/{other.organization_id}/invitations/{created['id']}/revoke"
    problem(client.post(foreign, headers=other.headers), 404)  # not that organization's

    response = client.post(path, headers=approver.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["state"] == "revoked" and response.json["revoked_at"]
    problem(client.post(path, headers=approver.headers), 409, "invitation_revoked")
    problem(
        client.post(
            f"/v1/organizations/{approver.organization_id}/invitations/{uuid.uuid4()}/revoke",
            headers=approver.headers,
        ),
        404,
    )
    with db.session(read_only=True) as session:
        actions = list(
            session.scalars(select(AuditEvent.action).where(AuditEvent.object_id == created["id"]))
        )
        with pytest.raises(invitations.InvitationGone):
            invitations.by_token(session, token_of(created["link"]), datetime.now(UTC))
    assert actions == ["invitation.created", "invitation.revoked"]


# The link: unknown, expired, used ----------------------------------------------------------


def test_by_token_refuses_unknown_and_expired_links(
    app: Flask, client: FlaskClient, db: Database, approver: ApiUser
) -> None:
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)
    app.config["CLOCK"] = lambda: eight_days_ago
    old = invite(client, approver, approver.organization_id).json
    app.config["CLOCK"] = None
    assert [item["state"] for item in listing(client, approver, approver.organization_id)] == [
        "expired"
    ]
    now = datetime.now(UTC)
    with db.session(read_only=True) as session:
        with pytest.raises(invitations.InvitationGone) as gone:
            invitations.by_token(session, token_of(old["link"]), now)
        assert (gone.value.status, gone.value.code) == (410, "invitation_expired")
        assert invitations.pending_for(session, "jeanne.martin@agence.gouv.fr", now) == []
        for token in ["", "x" * 43, "é" * 43, "a" * 1000, token_of(old["link"])[:-1]]:
            with pytest.raises(NotFound):
                invitations.by_token(session, token, now)


def test_accepting_gives_the_roles_once(
    client: FlaskClient, db: Database, approver: ApiUser, make_user: MakeUser
) -> None:
    person = make_person(db)
    as_buyer = invite(client, approver, approver.organization_id, roles=["buyer"]).json
    now = datetime.now(UTC)
    with db.transaction() as session:
        invitation = invitations.by_token(session, token_of(as_buyer["link"]), now)
        membership = invitations.accept_into_membership(session, invitation, person, now)
        assert membership.roles == ["buyer"]
    with db.transaction() as session:
        used = session.get(Invitation, uuid.UUID(as_buyer["id"]))
        assert used is not None
        with pytest.raises(invitations.InvitationGone) as gone:
            invitations.by_token(session, token_of(as_buyer["link"]), now)
        assert gone.value.code == "invitation_used"
        with pytest.raises(invitations.InvitationGone):  # the same invitation twice
            invitations.accept_into_membership(session, used, person, now)

    # A later invitation adds its roles to the membership; another organization's makes one.
    as_approver = invite(client, approver, approver.organization_id, roles=["approver"]).json
    elsewhere = make_user("agency", ["approver"])
    there = invite(client, elsewhere, elsewhere.organization_id, roles=["buyer"]).json
    with db.transaction() as session:
        pending = invitations.pending_for(session, "jeanne.martin@agence.gouv.fr", now)
        assert [str(i.id) for i in pending] == [as_approver["id"], there["id"]]
        for invitation in pending:
            invitations.accept_into_membership(session, invitation, person, now)
    with db.session(read_only=True) as session:
        memberships = {
            str(m.organization_id): m.roles
            for m in session.scalars(select(Membership).where(Membership.user_id == person))
        }
        actions = list(
            session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.object_type == "membership")
                .order_by(AuditEvent.seq)
            )
        )
    assert memberships == {
        approver.organization_id: ["approver", "buyer"],
        elsewhere.organization_id: ["buyer"],
    }
    assert actions == ["membership.created", "membership.updated", "membership.created"]
    states = [item["state"] for item in listing(client, approver, approver.organization_id)]
    assert states == ["accepted", "accepted"]
    problem(
        client.post(
            f"/v1/organizations/{approver.organization_id}/invitations/{as_buyer['id']}/revoke",
            headers=approver.headers,
        ),
        409,
        "invitation_used",
    )


# The e-mail --------------------------------------------------------------------------------


def test_the_email_reaches_the_smtp_server(
    app: Flask, client: FlaskClient, db: Database, approver: ApiUser, smtp: Inbox
) -> None:
    response = invite(client, approver, approver.organization_id, roles=["buyer", "approver"])
    assert response.status_code == 201
    assert response.json["emailed"] is True
    link = response.json["link"]
    assert smtp.messages == []  # sent by a job, not by the request

    with db.session(read_only=True) as session:
        job = session.scalar(select(Job).where(Job.kind == invitations.JOB_KIND))
        assert job is not None
        assert token_of(link) not in json.dumps(job.payload)  # encrypted
    assert run_jobs(app, db) == 1

    [(recipients, message)] = smtp.messages
    assert recipients == ["Jeanne.Martin@Agence.gouv.fr"]
    assert message["To"] == "Jeanne.Martin@Agence.gouv.fr"
    assert message["From"] == "invitations@broker.example"
    with db.session(read_only=True) as session:
        invitation = session.get(Invitation, uuid.UUID(response.json["id"]))
        assert invitation is not None
        organization = session.get(Organization, invitation.organization_id)
        assert organization is not None
        expires = invitation.expires_at
        job = session.scalar(select(Job).where(Job.kind == invitations.JOB_KIND))
        assert job is not None
    assert message["Subject"] == (
        f"Invitation à rejoindre {organization.name} / Invitation to join {organization.name}"
    )
    text = message.get_content()
    assert text.count(link) == 2
    french, english = text.index("Vous êtes invité"), text.index("You are invited")
    assert french < english
    assert "avec les rôles : approbateur, acheteur." in text
    assert "with the roles: approver, buyer." in text
    assert f"{expires:%d/%m/%Y à %H:%M} UTC" in text
    assert f"{expires:%Y-%m-%d at %H:%M} UTC" in text
    assert job.state is JobState.SUCCEEDED
    assert job.payload == {"invitation_id": response.json["id"]}  # the link is gone
    assert run_jobs(app, db) == 0  # nothing left to send


def test_a_revoked_invitation_is_not_emailed(
    app: Flask, client: FlaskClient, db: Database, approver: ApiUser, smtp: Inbox
) -> None:
    invite(client, approver, approver.organization_id, roles=["buyer"])
    invite(client, approver, approver.organization_id, roles=["approver"])  # revokes the first
    assert run_jobs(app, db) == 2
    [(_, message)] = smtp.messages
    assert "approbateur" in message.get_content() and "acheteur" not in message.get_content()


def test_an_smtp_outage_fails_the_job_not_the_request(
    app: Flask, client: FlaskClient, db: Database, approver: ApiUser
) -> None:
    app.config["SMTP_URL"] = f"smtp://127.0.0.1:{free_port()}"  # nobody listens there
    app.config["SMTP_TIMEOUT_SECONDS"] = 2
    response = invite(client, approver, approver.organization_id)
    assert response.status_code == 201 and response.json["emailed"] is True
    run_jobs(app, db)
    with db.session(read_only=True) as session:
        job = session.scalar(select(Job).where(Job.kind == invitations.JOB_KIND))
        assert job is not None
        assert job.state is JobState.FAILED  # retried later, with backoff
        assert "ConnectionRefused" in (job.last_error or "")
        assert "link_ciphertext" in job.payload  # kept for the next attempt


def test_a_refused_recipient_makes_the_job_dead(
    app: Flask, client: FlaskClient, db: Database, approver: ApiUser, smtp: Inbox
) -> None:
    smtp.refuse.add("nobody@agence.gouv.fr")
    invite(client, approver, approver.organization_id, "nobody@agence.gouv.fr")
    run_jobs(app, db)
    with db.session(read_only=True) as session:
        job = session.scalar(select(Job).where(Job.kind == invitations.JOB_KIND))
        assert job is not None
        assert job.state is JobState.DEAD
        assert "refused" in (job.last_error or "")
    assert smtp.messages == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.org", ("mail.example.org", 25, "none", None, None)),
        ("smtp://127.0.0.1:2525", ("127.0.0.1", 2525, "none", None, None)),
        (
            "smtp+starttls://robot%40x:p%40ss@mail.example.org:587",
            ("mail.example.org", 587, "starttls", "robot@x", "p@ss"),
        ),
        ("smtps://u:p@mail.example.org", ("mail.example.org", 465, "tls", "u", "p")),
    ],
)
def test_smtp_urls(url: str, expected: tuple[Any, ...]) -> None:
    settings = invitations.smtp_settings({"SMTP_URL": url})
    assert settings is not None
    got = (settings.host, settings.port, settings.security, settings.username, settings.password)
    assert got == expected
    assert settings.sender == "broker@localhost"
    assert "p@ss" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://mail.example.org", "must start with"),
        ("smtp://u:secret@mail.example.org", "in clear"),
        ("smtp://mail.example.org:99999", "port"),
        ("smtp://:25", "no host"),
    ],
)
def test_malformed_smtp_urls_are_named(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        invitations.smtp_settings({"SMTP_URL": url})
    assert invitations.smtp_settings({}) is None
