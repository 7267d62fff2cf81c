"""The harness the tests and the benchmarks share: a throwaway service on the machine's real
PostgreSQL and Redis (a fresh migrated database, a private Celery queue, a data folder), real
worker processes on it, and waiting for what they do.

    with throwaway_service("xal_bench") as env:
        worker = start_worker(Path(env["XAL_DATA_DIR"]) / "worker.log")
        ...
        stop(worker)

The servers are XAL_TEST_POSTGRES (an admin connection; the database is created beside its
own) and XAL_TEST_REDIS, by default the local ones with trust authentication."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get("XAL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("XAL_TEST_REDIS", "redis://127.0.0.1:6379/0")

T = TypeVar("T")


def database_url(database: str) -> str:
    """The SQLAlchemy URL of `database` on the XAL_TEST_POSTGRES server."""
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{database}"


@contextmanager
def throwaway_service(prefix: str, data_dir: Path | None = None, **settings: str) -> Iterator[dict[str, str]]:
    """A fresh migrated database named `prefix` + a random suffix, a Celery queue of its own and a
    data folder (`data_dir`, else a temporary one removed after), set in os.environ with any
    further XAL_* `settings` while inside; all of it dropped after. Pool pretraining is off
    (XAL_POOL_PRETRAINING_EPOCHS=0) unless `settings` turn it on."""
    import psycopg

    from backend.core.settings import get_settings

    database = f"{prefix}_{uuid.uuid4().hex[:10]}"
    made_dir = data_dir is None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix=f"{prefix}-data-"))
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    env = {
        "XAL_DATABASE_URL": database_url(database),
        "XAL_BROKER_URL": REDIS_URL,
        "XAL_QUEUE": f"{prefix}-{database}",
        "XAL_DATA_DIR": str(data_dir),
        "XAL_DEVICE": "cpu",
        "XAL_POOL_PRETRAINING_EPOCHS": "0",
        **settings,
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        from backend.core.db.migrate import upgrade_database

        upgrade_database()
        yield env
    finally:
        from backend.core.db.session import get_engine

        get_engine().dispose()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        drop_queue(env["XAL_QUEUE"])
        if made_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


def drop_queue(queue: str) -> None:
    """The jobs no worker took, and kombu's bookkeeping of the queue."""
    import redis

    redis.Redis.from_url(REDIS_URL).delete(queue, f"_kombu.binding.{queue}")


def start_worker(log: Path, env: Mapping[str, str] | None = None, concurrency: int = 1) -> subprocess.Popen:
    """`xal worker` in a process of its own on os.environ's service (and `env` over it), its
    output in the file `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "worker", "--concurrency", str(concurrency)],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_until_ready(logs: list[Path], timeout: float = 180) -> None:
    """Until every worker whose output goes to `logs` has said it is ready."""
    wait_for(
        lambda: all(log.exists() and "ready." in log.read_text() for log in logs),
        timeout,
        message="the workers to be ready",
    )


def api_is_up(client: Any) -> bool:
    """Whether the API behind `client` (an httpx.Client with its base URL) answers its health check."""
    import httpx

    try:
        return client.get("/api/health").status_code == 200
    except httpx.HTTPError:
        return False


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it does not end in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.5, message: str = "condition") -> T:
    """The first truthy value of `predicate()`, polled every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def wait_for_round(
    client: Any, headers: dict, project_id: int, number: int, timeout: float = 300, interval: float = 1
) -> dict:
    """Polls the API (a TestClient or an httpx.Client) until the round is done; AssertionError
    with its error when it failed."""

    def finished() -> dict | None:
        response = client.get(f"/api/projects/{project_id}/rounds/{number}", headers=headers)
        if response.status_code == 200 and response.json()["state"] in ("done", "failed"):
            return response.json()
        return None

    round_ = wait_for(finished, timeout, interval, f"round {number}")
    assert round_["state"] == "done", round_["error"]
    return round_
