"""Shared fixtures.

The real I3A cells live in ../shared/data/i3a and are read in place. Where they are
missing (a user's fresh machine) data-dependent tests skip; in CI (CI=true) a missing
data set is a failure, not a skip.

Service tests run against the real PostgreSQL and Redis of the machine and a real Celery
worker process; each test session gets its own database and Celery queue, shared by the
service and browser tests.
"""

import csv
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

I3A_DIR = Path(os.environ.get("XAL_I3A_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "i3a"))


def require(available: bool, message: str) -> None:
    """What a test needs from the machine: skipped where it is missing, a failure in CI."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _require_i3a() -> Path:
    require((I3A_DIR / "labels.csv").is_file(), f"real I3A cells not found at {I3A_DIR} (set XAL_I3A_DIR)")
    return I3A_DIR


@pytest.fixture(scope="session")
def i3a_dir() -> Path:
    return _require_i3a()


@pytest.fixture(scope="session")
def i3a_rows(i3a_dir) -> list[dict]:
    """labels.csv rows: image_id, pattern, image_path, mask_path (paths relative to i3a_dir)."""
    with open(i3a_dir / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def balanced_sample(rows: list[dict], per_class: int, offset: int = 0) -> list[dict]:
    """The same few cells of every class, deterministically (rows are sorted by id)."""
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(row["pattern"], []).append(row)
    return [row for cls in sorted(by_class) for row in by_class[cls][offset : offset + per_class]]


POSTGRES_ADMIN_URL = os.environ.get("XAL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("XAL_TEST_REDIS", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]


def _sqlalchemy_url(database: str) -> str:
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def service_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A fresh migrated PostgreSQL database, a private Celery queue and data dir; set in os.environ."""
    database = f"xal_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    env = {
        "XAL_DATABASE_URL": _sqlalchemy_url(database),
        "XAL_BROKER_URL": REDIS_URL,
        "XAL_QUEUE": f"xal-test-{database}",
        "XAL_DATA_DIR": str(tmp_path_factory.mktemp("xal-data")),
        "XAL_DEVICE": "cpu",
        # no pretraining on the pool before round 0 unless a test asks for it (test_clustering)
        "XAL_POOL_PRETRAINING_EPOCHS": "0",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    _clear_cached_settings()
    from backend.core.db.migrate import upgrade_database

    upgrade_database()
    yield env
    from backend.core.db.session import get_engine

    get_engine().dispose()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _clear_cached_settings()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    import redis

    # rounds no worker took, and kombu's bookkeeping of the queue
    redis.Redis.from_url(REDIS_URL).delete(env["XAL_QUEUE"], f"_kombu.binding.{env['XAL_QUEUE']}")


def _clear_cached_settings() -> None:
    from backend.core.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture(scope="session")
def app_client(service_env) -> TestClient:
    from backend.api.app import create_app

    return TestClient(create_app())


@pytest.fixture
def db(service_env):
    from backend.core.db.session import new_session

    with new_session() as session:
        yield session


def make_user(role: str, username: str | None = None, project_ids=()) -> tuple[str, dict[str, str]]:
    """Creates a user, a member of the projects `project_ids`, and returns (username, Authorization headers)."""
    from backend.core.db.models import Project
    from backend.core.db.session import new_session
    from backend.services.members import add_member
    from backend.services.users import create_user, issue_token

    username = username or f"{role}-{uuid.uuid4().hex[:6]}"
    with new_session() as session:
        user = create_user(session, username, role)
        for project_id in project_ids:
            add_member(session, session.get(Project, project_id), user.id)
        _, secret = issue_token(session, user)
        session.commit()
    return username, {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="session")
def admin_headers(service_env) -> dict[str, str]:
    return make_user("admin")[1]


@pytest.fixture(scope="session")
def worker(service_env, tmp_path_factory) -> Iterator[subprocess.Popen]:
    """A real Celery worker process on the session's queue."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "worker", "--concurrency", "1"],
        cwd=ROOT,
        env={**os.environ, **service_env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    stop(process)
    log.close()
    sys.stderr.write(f"\n[worker log: {log_path}]\n")


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it does not end in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for(predicate, timeout: float, interval: float = 0.5, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def started_project(client, headers: dict, i3a_dir: Path, rows: list[dict], spec: dict) -> int:
    """A project (`spec`, the body of POST /api/projects; a unique name added) whose pool holds
    `rows` (real I3A cells, read in place), started, its round 0 done: computed in this process
    (worker.round_job.run_round) or, where the session's worker took it first, by that worker."""
    from sqlalchemy import select

    from backend.core.db.models import Round
    from backend.core.db.session import new_session
    from backend.core.readers import IncomingFile
    from backend.services.imports import import_images
    from backend.services.projects import find_project
    from worker.round_job import run_round

    response = client.post("/api/projects", headers=headers, json={"name": f"test-{uuid.uuid4().hex[:8]}", **spec})
    assert response.status_code == 201, response.text
    project_id = response.json()["id"]
    with new_session() as session:
        files = [IncomingFile(f"{r['image_id']}.png", (i3a_dir / r["image_path"]).read_bytes()) for r in rows]
        import_images(session, find_project(session, project_id), files)
        session.commit()
    assert client.post(f"/api/projects/{project_id}/start", headers=headers).status_code == 202
    with new_session() as session:
        round_id = session.scalar(select(Round.id).where(Round.project_id == project_id, Round.number == 0))
    run_round(round_id)  # "skipped" when the session's worker took it first
    wait_for_round(client, headers, project_id, 0)
    return project_id


def wait_for_round(client, headers: dict, project_id: int, number: int, timeout: float = 300) -> dict:
    """Polls the API until the round is done (or failed: then the test fails with its error)."""

    def finished():
        response = client.get(f"/api/projects/{project_id}/rounds/{number}", headers=headers)
        if response.status_code == 200 and response.json()["state"] in ("done", "failed"):
            return response.json()
        return None

    round_ = wait_for(finished, timeout=timeout, interval=1, message=f"round {number}")
    assert round_["state"] == "done", round_["error"]
    return round_


def mislabeled_selections(project_id: int) -> list[tuple[int, int, bool]]:
    """(round number, image id, labeled) of the project's selections whose `labeled` flag
    disagrees with the labels table (the queue reads the flag; the labels are the truth)."""
    from sqlalchemy import select

    from backend.core.db.models import Round, Selection
    from backend.core.db.session import new_session
    from backend.core.queries import current_label_exists

    with new_session() as session:
        return [
            tuple(row)
            for row in session.execute(
                select(Round.number, Selection.image_id, Selection.labeled)
                .join(Round, Round.id == Selection.round_id)
                .where(Round.project_id == project_id, Selection.labeled != current_label_exists(Selection.image_id))
            )
        ]
