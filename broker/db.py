"""Database engine and sessions.

SQLite (embedded default) runs in WAL mode with foreign keys on and a busy timeout, and every
transaction that may write starts with ``BEGIN IMMEDIATE`` so two writers queue on the lock at
the start instead of colliding at commit. Read-only sessions (`read_only=True`) use a deferred
``BEGIN`` and never block writers. PostgreSQL goes through psycopg 3.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    any_,
    bindparam,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Accept `postgres://` and `postgresql://` URLs and use the psycopg 3 driver for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine configured for the broker's transaction rules."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    # The recipe from SQLAlchemy's pysqlite documentation: take BEGIN over from the driver.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def insert(session: Session, entity: Any) -> Any:
    """An INSERT for `entity` in the session's dialect (PostgreSQL or SQLite), so that
    `on_conflict_do_nothing` / `on_conflict_do_update` are available on both."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(entity)


def bulk_insert(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (dicts with the same keys, naming every column written) in one go, or
    raise the integrity error of one that cannot go in: PostgreSQL's `COPY`, SQLite's
    prepared INSERT run for every row (its executemany loop, in C).

    Both take the values as the columns' own types make them for the driver
    (`bind_processor`: a quantity's count of quanta, an enum's value, SQLite's text for a
    UUID or a time), as a Core INSERT would send them; doing it here, once per column rather
    than through the statement's per-row parameter handling, halves the cost of the insert."""
    if not rows:
        return
    dialect = connection.dialect
    columns = list(rows[0])
    processors = [
        (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in columns
    ]
    values = [
        tuple(row[name] if process is None else process(row[name]) for name, process in processors)
        for row in rows
    ]
    quote = dialect.identifier_preparer.quote
    target = f"{quote(table.name)} ({', '.join(quote(name) for name in columns)})"
    if dialect.name != "postgresql":
        placeholders = ", ".join("?" for _ in columns)
        connection.exec_driver_sql(f"INSERT INTO {target} VALUES ({placeholders})", values)
        return
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    with driver.cursor() as cursor, cursor.copy(f"COPY {target} FROM STDIN") as copy:
        for value in values:
            copy.write_row(value)


def any_of(session: Session, column: Any, values: Collection[Any]) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL as `= ANY` of one array parameter, since psycopg
    reads a statement's placeholders one by one (a thousand cost milliseconds)."""
    if session.get_bind().dialect.name == "postgresql":
        array = bindparam(None, list(values), type_=postgresql.ARRAY(column.type))
        return cast(ColumnElement[bool], column == any_(array))
    return cast(ColumnElement[bool], column.in_(values))


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class Database:
    """The engine plus the two session factories (read-write and read-only)."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url, **engine_kwargs)
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        read_engine = (
            self.engine.execution_options(sqlite_begin="DEFERRED")
            if is_sqlite(self.engine)
            else self.engine
        )
        self._read = sessionmaker(read_engine, expire_on_commit=False)

    def session(self, *, read_only: bool = False) -> Session:
        return (self._read if read_only else self._write)()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        session = self.session()
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    def refresh_statistics(self) -> None:
        """Give SQLite's planner table statistics (PostgreSQL's autovacuum keeps its own):
        without them it may walk the wrong index of the catalogue's search."""
        if is_sqlite(self.engine):
            with self.engine.connect() as connection:
                connection.exec_driver_sql("ANALYZE")

    def dispose(self) -> None:
        self.engine.dispose()
