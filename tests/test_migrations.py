"""Migrations are the only way the schema changes: they build it from nothing, have one head,
match the models exactly, and go down and up again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from broker.db import make_engine
from broker.migrate import alembic_config, head_revisions, is_at_head, upgrade
from broker.models import Base


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
