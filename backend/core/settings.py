"""The one settings object. Every value comes from an XAL_* environment variable or its default.

With no variables set the service runs on an embedded default: SQLite under the data
dir and Celery's filesystem transport (folders under the data dir), so nothing but
Python is needed. Production sets XAL_DATABASE_URL (PostgreSQL) and XAL_BROKER_URL (Redis).
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XAL_", env_file=".env", extra="ignore")

    data_dir: Path = Path("xal-data")
    database_url: str | None = None  # default: sqlite:///<data_dir>/xal.db
    # PostgreSQL connections per process: pool, and more opened while the pool is busy, plus a
    # pool of database_pool_size for the labeling hot path (no overflow: backend.core.db.session);
    # keep processes x (2 x pool + overflow) under the server's max_connections
    database_pool_size: int = 10
    database_max_overflow: int = 20
    broker_url: str | None = None  # default: filesystem:// under <data_dir>/broker
    queue: str = "xal"  # Celery queue the API sends rounds to and workers consume
    device: Literal["auto", "cpu", "cuda"] = "auto"

    lease_seconds: int = 300
    # A running job's worker (a round, a pool clustering) renews the job's lease every quarter
    # of this; a job whose lease runs out (its worker died, or its message waited this long
    # unclaimed or was never sent) is queued and sent again by the API's sweeper, which looks
    # every quarter of this (backend.core.outbox).
    job_lease_seconds: int = 60
    max_upload_bytes: int = 512 * 1024 * 1024  # an upload's request body (files and zips)
    max_json_bytes: int = 64 * 1024  # any other request body
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_zip_members: int = 100_000
    # a round whose unlabeled pool holds more cells than this is scored in chunks of about
    # this size, one Celery task each, by every worker on the queue (worker.chunks)
    scoring_chunk_size: int = 1000
    # annotators never wait for a round: each round also queues this share of its step as
    # reserve cells (the next-ranked), served while the next round is computed
    queue_reserve: float = 0.5
    # a project that leaves model_settings.pool_pretraining_epochs unset pretrains this many
    # epochs on its pool before round 0 (0: none); docs/method.md
    pool_pretraining_epochs: int = 20

    # the addresses (or networks, comma-separated) of the reverse proxies whose X-Forwarded-For
    # and X-Forwarded-Proto are believed; by default none: the rate limit counts the address
    # that connects, which a client cannot forge
    trusted_proxies: str = ""

    # sign-in rate limit (backend.services.users.login_blocked_for), failures counted within
    # the window: free failures per (user name, address), after which each doubles the wait;
    # failures of one user name from all addresses, and of one address for all user names,
    # after which the addresses that failed are refused (but never a user's known address:
    # one it signed in from within the last login_known_address_days)
    # a sign-in's bearer token expires after this many hours (the page's session); tokens an
    # admin issues for API clients last until revoked unless given a lifetime
    signin_token_hours: float = 12
    login_max_failures: int = 5
    login_max_failures_per_user: int = 10
    login_max_failures_per_ip: int = 50
    login_window_seconds: int = 900
    login_known_address_days: int = 30

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'xal.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost//"  # a host named, or kombu warns that none was

    @property
    def embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
