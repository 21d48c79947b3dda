"""The gateway's database: SQLite by default, PostgreSQL when configured (`GATEWAY_DATABASE_URL`).

The job store and the slide store share one engine. On SQLite every transaction begins with
`BEGIN IMMEDIATE` (a job claim reads and writes in one go) and the journal is WAL, so readers
never wait for the writer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Table, create_engine, event, inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

SQLITE_BUSY_TIMEOUT_S = 30


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def add_missing_columns(engine: Engine, table: Table) -> None:
    """Columns added to `table` since a database was created (create_all makes only missing tables).

    Replicas starting together may race to add the same column: PostgreSQL says IF NOT EXISTS,
    and on SQLite a column another process added first is simply there when we look again."""
    present = {c["name"] for c in inspect(engine).get_columns(table.name)}
    for column in table.columns:
        if column.name in present:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        guard = "IF NOT EXISTS " if engine.dialect.name == "postgresql" else ""
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {guard}{column.name} {kind}")
        except OperationalError:
            if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                raise


def widen_big_integers(engine: Engine, table: Table) -> None:
    """BIGINT columns that an older PostgreSQL database created as INTEGER (SQLite's are 64-bit)."""
    if engine.dialect.name != "postgresql":
        return
    present = {c["name"]: str(c["type"]).upper() for c in inspect(engine).get_columns(table.name)}
    for column in table.columns:
        if isinstance(column.type, BigInteger) and present.get(column.name) == "INTEGER":
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ALTER COLUMN {column.name} TYPE BIGINT")
