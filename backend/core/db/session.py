"""Engines and sessions: one sync engine per database URL per process, and for the labeling
hot path (backend.services.annotating) one async asyncpg engine per URL and event loop."""

import asyncio
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from backend.core.settings import get_settings


@lru_cache
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")  # the API and the worker write concurrently
            cursor.close()

        return engine
    # pre-ping: connections the server dropped (it restarted) are replaced, not handed out;
    # connect_timeout: an unreachable server fails a request in seconds (the API answers 503)
    settings = get_settings()
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        connect_args={"connect_timeout": 5},
    )


def get_engine() -> Engine:
    return engine_for(get_settings().resolved_database_url)


@lru_cache
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


def new_session() -> Session:
    return _session_factory(get_settings().resolved_database_url)()


def get_async_engine() -> AsyncEngine:
    """The PostgreSQL database's asyncpg engine, in autocommit: each statement is its own
    transaction, so a request that is one statement is one round trip. No pre-ping (it would be
    a second round trip): a connection the server dropped fails its request with a 503 and the
    pool is emptied, so the next request connects afresh."""
    return _async_engine_for(get_settings().resolved_database_url, asyncio.get_running_loop())


@lru_cache(maxsize=8)
def _async_engine_for(url: str, _loop: asyncio.AbstractEventLoop) -> AsyncEngine:
    # an asyncpg connection belongs to the event loop that opened it: uvicorn runs one loop per
    # process for its lifetime, a TestClient one per client context
    # A fixed pool, no overflow: the hot path's statements take about a millisecond, so a burst
    # of requests waits a moment for a pooled connection (an await, free) instead of opening one
    # that the pool closes again on return, each a new server process, a login and statements
    # prepared again: in one load run slowed by a profiler, 50 annotators made the overflow open
    # 210 connections in 25 s (bench/README.md, "The labeling hot path").
    # Generic plans: asyncpg prepares each statement once per connection, and PostgreSQL may then
    # plan it once (a generic plan) or again at every call (a custom plan), choosing by comparing
    # cost estimates after the fifth call. Planning the hot path's statements costs more than twice
    # what running them does (bench/README.md, "PostgreSQL's high mode"), so a connection plans
    # each once; their parameters (a project, a caller) do not change which plan is best.
    # No sequential scans: each of those statements finds its rows through indexes, but a plan
    # made while a table looked empty (a new database before autovacuum's first ANALYZE) scanned
    # the labels for every label, a cost that grew with each label until the next ANALYZE
    # (bench/README.md, session 13).
    driver, rest = url.split("://", 1)
    return create_async_engine(
        f"postgresql+asyncpg://{rest}" if driver.startswith("postgresql") else url,
        isolation_level="AUTOCOMMIT",
        pool_size=get_settings().database_pool_size,
        max_overflow=0,
        connect_args={"timeout": 5, "server_settings": {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}},
    )
