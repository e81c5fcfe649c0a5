"""The admin's pages: organizations, providers, API clients (created, revoked, their secrets
rotated: a new secret is shown once, on the page that answers the change, never in a link,
a notice or a log), identity providers, and the audit log with the chain's verification."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import marshmallow as ma
from flask import Response, current_app, request
from flask_babel import gettext
from werkzeug.wrappers import Response as BaseResponse

from broker.api.audit import AuditListArgs
from broker.api.base import now, provider_runtime, request_session
from broker.api.identity_providers import IdentityProviderCreateSchema
from broker.api.limits import expensive
from broker.api.organizations import ClientCreateSchema, OrganizationCreateSchema
from broker.errors import BrokerError, NotFound
from broker.models import Organization, OrganizationKind, Role
from broker.services import audit as audit_service
from broker.services import identity_providers as identity_providers_service
from broker.services import members as members_service
from broker.services import organizations as organizations_service
from broker.services import providers as providers_service
from broker.web.pages import (
    Problem,
    bp,
    caller,
    cursor_arg,
    done,
    filters,
    page,
    precondition,
    problem_of,
    query_args,
    render,
)

EVERYTHING = 200  # the consortium's organizations, providers, clients: one page of them


def _organizations() -> list[Organization]:
    return organizations_service.list_organizations(
        request_session(), caller(), limit=EVERYTHING, cursor=None
    ).items


def _kind_options() -> list[tuple[str, str]]:
    words = {
        OrganizationKind.AGENCY: gettext("agency"),
        OrganizationKind.PROVIDER: gettext("provider"),
        OrganizationKind.CONSORTIUM: gettext("consortium"),
    }
    return [(kind.value, words[kind]) for kind in OrganizationKind]


# Organizations -------------------------------------------------------------------------


def _organizations_page(problem: Problem | None = None, **context: Any) -> Response:
    session = request_session()
    organizations = _organizations()
    identifiers = {
        organization.id: members_service.list_identifiers(
            session, organization.id, limit=EVERYTHING, cursor=None
        ).items
        for organization in organizations
    }
    return render(
        "console/admin/organizations.html",
        200 if problem is None else problem.status,
        organizations=organizations,
        identifiers=identifiers,
        kinds=dict(_kind_options()),
        kind_options=_kind_options(),
        problem=problem,
        **context,
    )


@bp.get("/admin/organizations")
@page(Role.ADMIN)
def organizations() -> Response:
    """Every organization of the consortium, with the identifiers its people are recognised
    by at sign-in; a form to register one."""
    return _organizations_page()


@bp.post("/admin/organizations")
@page(Role.ADMIN)
def create_organization() -> Response | BaseResponse:
    """Register an organization."""
    typed = {"name": request.form.get("name", "").strip(), "kind": request.form.get("kind", "")}
    try:
        data = OrganizationCreateSchema().load(typed)
        organization = organizations_service.create_organization(
            request_session(), caller(), **data
        )
    except (BrokerError, ma.ValidationError) as error:
        return _organizations_page(problem_of(error), typed=typed)
    return done(
        "console.organizations",
        gettext("%(name)s is registered.", name=organization.name),
    )


# Providers -----------------------------------------------------------------------------


@bp.get("/admin/providers")
@page(Role.ADMIN)
def providers() -> Response:
    """The providers: state, where they operate, which foreign laws reach them, and how much
    of their evidence is verified, pending or rejected."""
    found = providers_service.list_providers(
        request_session(), limit=EVERYTHING, cursor=cursor_arg()
    )
    return render(
        "console/admin/providers.html",
        providers=found.items,
        page=found,
        evidence={
            provider.id: Counter(item.state.value for item in provider.evidence)
            for provider in found.items
        },
        evidence_queue="console.evidence_queue" in current_app.view_functions,
    )


# API clients ---------------------------------------------------------------------------


def _clients_page(
    chosen: uuid.UUID | None,
    problem: Problem | None = None,
    status: int = 200,
    **context: Any,
) -> Response:
    """The clients of the organization `chosen` (None: of every organization)."""
    session, person = request_session(), caller()
    organizations = _organizations()
    shown = [o for o in organizations if chosen is None or o.id == chosen]
    if chosen is not None and not shown:
        raise NotFound("No such organization.")
    clients = {
        organization.id: organizations_service.list_clients(
            session, person, organization.id, limit=EVERYTHING, cursor=None
        ).items
        for organization in shown
    }
    return render(
        "console/admin/clients.html",
        problem.status if problem is not None else status,
        organizations=organizations,
        shown=shown,
        clients=clients,
        chosen=chosen,
        roles=sorted(role.value for role in Role),
        organization_options=[(str(o.id), o.name) for o in organizations],
        problem=problem,
        **context,
    )


def _chosen_organization() -> uuid.UUID | None:
    value = request.args.get("organization", "")
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


@bp.get("/admin/clients")
@page(Role.ADMIN)
def api_clients() -> Response:
    """Every organization's API clients (or one's, chosen above the list): roles, state, when
    made and rotated; a form to issue one."""
    return _clients_page(_chosen_organization())


@bp.post("/admin/clients")
@page(Role.ADMIN)
def create_client() -> Response:
    """Issue an API client; its secret is shown once, on this answer."""
    typed: dict[str, Any] = {
        "organization": request.form.get("organization", ""),
        "name": request.form.get("name", "").strip(),
        "roles": request.form.getlist("roles"),
    }
    try:
        organization_id = uuid.UUID(typed["organization"])
    except ValueError:
        problem = Problem(
            gettext("Some values are not valid: see the fields below."),
            {"organization": [gettext("Choose an organization.")]},
        )
        return _clients_page(None, problem, typed=typed)
    try:
        data = ClientCreateSchema().load({"name": typed["name"], "roles": typed["roles"]})
        issued = organizations_service.create_client(
            request_session(), caller(), organization_id, **data
        )
    except (BrokerError, ma.ValidationError) as error:
        return _clients_page(None, problem_of(error), typed=typed)
    return _clients_page(organization_id, status=201, issued=issued)


@bp.post("/admin/clients/<uuid:organization_id>/<string(maxlength=64):client_id>/revoke")
@page(Role.ADMIN)
def revoke_client(organization_id: uuid.UUID, client_id: str) -> Response | BaseResponse:
    """Revoke an API client for good: the tokens it holds are refused from now on."""
    try:
        client = organizations_service.revoke_client(
            request_session(), caller(), organization_id, client_id, now()
        )
    except NotFound:
        raise
    except BrokerError as error:
        return _clients_page(organization_id, problem_of(error))
    return done(
        "console.api_clients",
        gettext("The API client %(name)s is revoked.", name=client.name),
        organization=organization_id,
    )


@bp.post("/admin/clients/<uuid:organization_id>/<string(maxlength=64):client_id>/rotate")
@page(Role.ADMIN)
def rotate_client(organization_id: uuid.UUID, client_id: str) -> Response:
    """Give an API client a new secret, shown once on this answer; the old one, and tokens
    issued under it, stop working."""
    try:
        issued = organizations_service.rotate_client_secret(
            request_session(), caller(), organization_id, client_id, now()
        )
    except NotFound:
        raise
    except BrokerError as error:
        return _clients_page(organization_id, problem_of(error))
    return _clients_page(organization_id, issued=issued, rotated=True)


# Identity providers --------------------------------------------------------------------


def _identity_providers_page(problem: Problem | None = None, **context: Any) -> Response:
    found = identity_providers_service.list_identity_providers(
        request_session(), limit=EVERYTHING, cursor=None
    )
    return render(
        "console/admin/identity_providers.html",
        200 if problem is None else problem.status,
        identity_providers=found.items,
        default_scopes=identity_providers_service.DEFAULT_SCOPES,
        problem=problem,
        **context,
    )


@bp.get("/admin/identity-providers")
@page(Role.ADMIN)
def identity_providers() -> Response:
    """The OpenID Connect providers people sign in with, and how their organization is found;
    a form to add one."""
    return _identity_providers_page()


@bp.post("/admin/identity-providers")
@page(Role.ADMIN)
def create_identity_provider() -> Response | BaseResponse:
    """Trust a new OpenID Connect provider (its client secret is kept encrypted, never shown)."""
    form = request.form
    typed = {
        name: form.get(name, "").strip()
        for name in ("name", "issuer", "client_id", "scopes", "organization_claim")
    }
    body: dict[str, Any] = {
        **{name: value for name, value in typed.items() if value},
        "client_secret": form.get("client_secret", ""),
        "match_email_domain": "match_email_domain" in form,
        "enabled": "enabled" in form,
    }
    typed.update(match_email_domain=body["match_email_domain"], enabled=body["enabled"])
    runtime = provider_runtime()
    try:
        data = IdentityProviderCreateSchema().load(body)
        row = identity_providers_service.create(
            request_session(), caller(), data, keyring=runtime.keyring, http=runtime.http
        )
    except (BrokerError, ma.ValidationError) as error:
        return _identity_providers_page(problem_of(error), typed=typed)
    return done("console.identity_providers", gettext("%(name)s is added.", name=row.name))


def _switch_identity_provider(provider_id: uuid.UUID, enabled: bool) -> Response | BaseResponse:
    revision = request.form.get("revision", "")
    runtime = provider_runtime()
    try:
        row = identity_providers_service.update(
            request_session(),
            caller(),
            provider_id,
            if_match=precondition(revision),
            changes={"enabled": enabled},
            keyring=runtime.keyring,
            http=runtime.http,
        )
    except NotFound:
        raise
    except BrokerError as error:
        return _identity_providers_page(problem_of(error))
    message = (
        gettext("%(name)s is offered at sign-in.", name=row.name)
        if enabled
        else gettext("%(name)s is no longer offered at sign-in.", name=row.name)
    )
    return done("console.identity_providers", message)


@bp.post("/admin/identity-providers/<uuid:provider_id>/enable")
@page(Role.ADMIN)
def enable_identity_provider(provider_id: uuid.UUID) -> Response | BaseResponse:
    """Offer an identity provider at sign-in again."""
    return _switch_identity_provider(provider_id, True)


@bp.post("/admin/identity-providers/<uuid:provider_id>/disable")
@page(Role.ADMIN)
def disable_identity_provider(provider_id: uuid.UUID) -> Response | BaseResponse:
    """Stop offering an identity provider at sign-in."""
    return _switch_identity_provider(provider_id, False)


# Audit log -----------------------------------------------------------------------------


@bp.get("/admin/audit")
@page(Role.ADMIN)
@expensive  # it walks the whole hash chain
def audit() -> Response:
    """The audit log, newest first, with whether its hash chain holds from the first event."""
    session = request_session()
    args = query_args()
    wanted, problem = filters(AuditListArgs, args)
    # First: the walk through the chain lets go of what the session holds.
    report = audit_service.verify_chain(session)
    try:
        found = audit_service.list_events(session, caller(), **wanted, newest_first=True)
    except BrokerError as error:  # a cursor of another listing
        problem = problem_of(error)
        found = audit_service.list_events(
            session, caller(), **{**wanted, "cursor": ""}, newest_first=True
        )
    names = members_service.person_names(
        session, [event.actor_client_id for event in found.items if event.actor_client_id]
    )
    return render(
        "console/admin/audit.html",
        200 if problem is None else problem.status,
        report=report,
        events=found.items,
        page=found,
        names=names,
        args=args,
        problem=problem,
    )
