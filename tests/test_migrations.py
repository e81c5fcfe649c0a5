"""Migrations are the only way the schema changes: they build it from nothing, have one head,
match the models exactly, and go down and up again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from broker.db import make_engine
from broker.jobs.lanes import lane_of
from broker.migrate import alembic_config, head_revisions, is_at_head, upgrade
from broker.models import Base
from broker.names import name_key


@pytest.fixture
def empty_database_url(db_kind: str, tmp_path: Path, pytestconfig: pytest.Config) -> Iterator[str]:
    """A database with no tables at all, on the backend under test."""
    if db_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = make_url(pytestconfig.broker_pg_url)  # type: ignore[attr-defined]
    name = f"migrations_{uuid.uuid4().hex[:12]}"
    admin_dsn = f"host={server.host} port={server.port} user={server.username} dbname=postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_upgrade_from_empty_builds_every_table(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    assert not is_at_head(engine)
    upgrade(empty_database_url)
    assert is_at_head(engine)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    engine.dispose()


def test_models_match_migrations(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == [], "models and migrations differ: add a migration"


def test_downgrade_to_base_and_up_again(empty_database_url: str) -> None:
    config = alembic_config(empty_database_url)
    upgrade(empty_database_url)
    command.downgrade(config, "base")
    engine = make_engine(empty_database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(empty_database_url)
    assert is_at_head(engine)
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
    assert frozenset(current) == head_revisions()
    engine.dispose()


def test_the_invoice_number_series_carries_over_to_the_document_series(
    empty_database_url: str,
) -> None:
    """0006 moves the invoice counter into the series table shared with credit notes (and
    back on downgrade): the next invoice number after the upgrade follows the last one."""
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0005")
    engine = make_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO invoice_number_series VALUES (2030, 41)"))
    command.upgrade(config, "0006")
    with engine.begin() as connection:
        rows = connection.execute(
            text("SELECT series, year, last_number FROM document_number_series")
        )
        assert rows.all() == [("invoice", 2030, 41)]
        connection.execute(
            text("INSERT INTO document_number_series VALUES ('credit_note', 2030, 3)")
        )
    command.downgrade(config, "0005")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT year, last_number FROM invoice_number_series"))
        assert rows.all() == [(2030, 41)]
    engine.dispose()


def test_stored_sovereignty_facts_become_verified_evidence_and_names_get_keys(
    empty_database_url: str,
) -> None:
    """0007: what the consortium stored before (only admins could write it) is verified
    evidence afterwards, the provider's counting columns are unchanged, and every name gets
    its look-alike key; downgrading gives the verified certifications back."""
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0006")
    at = datetime(2030, 1, 1, tzinfo=UTC)
    organization_id, provider_id, certificate_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    organizations = sa.table(
        "organizations",
        *(sa.column(n, t) for n, t in (("id", sa.Uuid()), ("name", sa.String()))),
        sa.column("kind", sa.String()),
        sa.column("version", sa.Integer()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    providers = sa.table(
        "providers",
        sa.column("id", sa.Uuid()),
        sa.column("name", sa.String()),
        sa.column("organization_id", sa.Uuid()),
        sa.column("adapter", sa.String()),
        sa.column("adapter_config", sa.JSON()),
        sa.column("regions", sa.JSON()),
        sa.column("operator_country", sa.String()),
        sa.column("parent_country", sa.String()),
        sa.column("extraterritorial_exposure", sa.JSON()),
        sa.column("exposed", sa.Boolean()),
        sa.column("state", sa.String()),
        sa.column("version", sa.Integer()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    certifications = sa.table(
        "provider_certifications",
        sa.column("id", sa.Uuid()),
        sa.column("provider_id", sa.Uuid()),
        sa.column("scheme", sa.String()),
        sa.column("level", sa.String()),
        sa.column("valid_from", sa.DateTime(timezone=True)),
        sa.column("valid_until", sa.DateTime(timezone=True)),
        sa.column("evidence_url", sa.String()),
    )
    region = {"code": "fr-par-1", "country": "FR", "city": "Paris", "datacenter_tier": 3}
    engine = make_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(
            organizations.insert().values(
                id=organization_id, name="Hexagone Cloud", kind="provider", version=1, created_at=at
            )
        )
        connection.execute(
            providers.insert().values(
                id=provider_id,
                name="Hexagone Cloud",
                organization_id=organization_id,
                adapter="simulated",
                adapter_config={},
                regions=[region],
                operator_country="FR",
                parent_country="US",
                extraterritorial_exposure=["US_CLOUD_ACT"],
                exposed=True,
                state="active",
                version=1,
                created_at=at,
            )
        )
        connection.execute(
            certifications.insert().values(
                id=certificate_id,
                provider_id=provider_id,
                scheme="secnumcloud",
                level="3.2",
                valid_from=at,
                valid_until=at + timedelta(days=365),
                evidence_url=None,
            )
        )
    command.upgrade(config, "0007")
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT kind, state, scheme, operator_country, parent_country, region_code, "
                "country, datacenter_tier, decided_by FROM provider_evidence ORDER BY kind"
            )
        ).all()
        assert [tuple(row) for row in rows] == [
            (
                "certification",
                "verified",
                "secnumcloud",
                None,
                None,
                None,
                None,
                None,
                "consortium",
            ),
            ("jurisdiction", "verified", None, "FR", "US", None, None, None, "consortium"),
            ("region", "verified", None, None, None, "fr-par-1", "FR", 3, "consortium"),
        ]
        keys = connection.execute(text("SELECT name_key FROM organizations")).scalars().all()
        assert keys == [name_key("Hexagone Cloud")]
        assert connection.execute(text("SELECT name_key FROM providers")).scalars().all() == keys
    command.downgrade(config, "0006")
    with engine.connect() as connection:
        schemes = connection.execute(text("SELECT scheme FROM provider_certifications"))
        assert schemes.scalars().all() == ["secnumcloud"]
    engine.dispose()


def test_migration_0009_puts_existing_jobs_in_the_lane_of_their_kind(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0008")
    engine = make_engine(empty_database_url)
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Uuid()),
        sa.column("kind", sa.String()),
        sa.column("payload", sa.JSON()),
        sa.column("state", sa.String()),
        sa.column("attempts", sa.Integer()),
        sa.column("max_attempts", sa.Integer()),
        sa.column("run_after", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("lane", sa.String()),
    )
    kinds = [
        "order.provision",
        "usage.meter",
        "provider.sync_offers",
        "webhook.deliver",
        "old.kind",
    ]
    at = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as connection:
        for kind in kinds:
            connection.execute(
                sa.insert(jobs).values(
                    id=uuid.uuid4(),
                    kind=kind,
                    payload={},
                    state="queued",
                    attempts=0,
                    max_attempts=8,
                    run_after=at,
                    updated_at=at,
                    created_at=at,
                )  # fmt: skip
            )
    upgrade(empty_database_url)
    with engine.connect() as connection:
        lanes_by_kind = dict(connection.execute(sa.select(jobs.c.kind, jobs.c.lane)).all())
    engine.dispose()
    assert lanes_by_kind == {
        "order.provision": "provisioning",
        "usage.meter": "billing",
        "provider.sync_offers": "catalogue",
        "webhook.deliver": "webhooks",
        "old.kind": "other",
    }
    assert {kind: lane_of(kind) for kind in kinds} == lanes_by_kind
