"""Database engine, sessions and the request's single commit point."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator
from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.db_pool import FairAsyncQueuePool
from avatar_api.settings import Settings


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend.

    SQLite stores naive values; without this a value read back would compare unequal to
    the aware value written.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def insert_on(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which has ``on_conflict_do_*`` (both backends support them)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no INSERT ... ON CONFLICT for {dialect}")


# Marks the engine of read sessions on SQLite, whose driver already runs in autocommit mode
# (see _configure_sqlite): only our own BEGIN is skipped. Switching pysqlite's isolation
# level instead would bring its implicit transactions back when the pool resets it.
READ_ONLY_OPTION = "avatar_read_only"


def _configure_sqlite(engine: AsyncEngine) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT and emits BEGIN lazily; take
    # over as SQLAlchemy's docs recommend, and use WAL so the in-process worker and the
    # API do not block each other's reads.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            return  # a read session: each statement is its own transaction
        # IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout
        # instead of failing with "database is locked" when upgrading a read lock.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# A pooled connection idle for longer than this is pinged before use. A busy pool is
# never pinged (a ping costs three round trips on asyncpg, more than the query it guards);
# a connection that sat idle across a database restart or an idle-timeout is caught before
# a request sees it.
PING_AFTER_IDLE_SECONDS = 5.0


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """SQLAlchemy's pessimistic disconnect handling, applied to idle connections only."""
    dialect = engine.sync_engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError("idle connection failed its ping") from exc


def _in_memory(url: str) -> bool:
    """An in-memory SQLite database lives in one connection (SQLAlchemy's StaticPool)."""
    parsed = make_url(url)
    return parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.database_url
    if url.startswith("sqlite"):
        # In memory: one connection, always (another would open another, empty database).
        pool: dict[str, Any] = {"poolclass": StaticPool}
        if not _in_memory(url):
            # Fixed and fair, as on PostgreSQL: SQLAlchemy's default (5, plus up to 10
            # overflow connections closed again on return) kept opening connections under
            # load, each a new aiosqlite thread and file handle with its PRAGMAs.
            pool = {
                "pool_size": settings.database_pool_size,
                "max_overflow": 0,
                "poolclass": FairAsyncQueuePool,
            }
        engine = create_async_engine(url, connect_args={"timeout": 30}, **pool)
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(
        url,
        # A fixed pool: under load, overflow connections would be opened and closed over and
        # over (each one a new backend and empty prepared-statement cache); requests queue
        # for a connection instead.
        pool_size=settings.database_pool_size,
        max_overflow=0,
        poolclass=FairAsyncQueuePool,  # waiters served in arrival order (see db_pool)
    )
    _ping_idle_connections(engine)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def create_read_sessionmaker(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> async_sessionmaker[AsyncSession]:
    """Sessions for requests that only read: no BEGIN/COMMIT round trips, no write lock.

    Each statement runs in its own implicit transaction (autocommit), which is right for a
    route that reads one consistent row or page and writes nothing. A sessionmaker bound to
    a connection (the tests' rolled-back transaction) is returned as it is.
    """
    bind = sessionmaker.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        return sessionmaker
    if bind.dialect.name == "sqlite":
        return create_sessionmaker(bind.execution_options(**{READ_ONLY_OPTION: True}))
    return create_sessionmaker(bind.execution_options(isolation_level="AUTOCOMMIT"))


class Reader:
    """Connections for the hot read paths, with no ORM session around them.

    Same bind and autocommit behaviour as :func:`create_read_sessionmaker`'s sessions, but a
    route takes it as a plain dependency: a session needs a generator dependency to be
    closed, and FastAPI's exit stack and cancel scope around one, with the session's own
    transaction bookkeeping, cost more CPU than the query (measured on
    ``GET /v1/avatars/{id}``, ``make bench BENCH_ARGS="--only reads"``).
    """

    def __init__(self, read_sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        bind = read_sessionmaker.kw.get("bind")
        if not isinstance(bind, AsyncEngine | AsyncConnection):
            raise TypeError("the read sessionmaker must be bound to an engine or a connection")
        self._bind = bind

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for a few statements; returned to the pool on exit."""
        if isinstance(self._bind, AsyncConnection):
            yield self._bind  # the tests' connection, inside their rolled-back transaction
            return
        async with self._bind.connect() as connection:
            yield connection


@asynccontextmanager
async def session_scope(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on error.

    Services only flush; this is the single place that commits.
    """
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
