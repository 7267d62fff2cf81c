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
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.testing import start_worker, stop, throwaway_service, wait_for_round

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


I3A_MISSING = f"real I3A cells not found at {I3A_DIR} (set XAL_I3A_DIR)"


def _require_i3a() -> Path:
    require((I3A_DIR / "labels.csv").is_file(), I3A_MISSING)
    return I3A_DIR


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """Ends a run that skipped tests for want of the I3A cells with a line that says how many:
    -ra lists them among other skips, and "N passed, M skipped" alone reads as green."""
    yield  # after pytest's own summary: the line sits just above the final counts
    skipped = sum(I3A_MISSING in str(report.longrepr) for report in terminalreporter.stats.get("skipped", []))
    if skipped:
        terminalreporter.write_sep(
            "!", f"{skipped} tests skipped: {I3A_MISSING}; this run did not test them", red=True, bold=True
        )


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


@pytest.fixture(scope="session")
def service_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A fresh migrated PostgreSQL database, a private Celery queue and data dir; set in os.environ."""
    with throwaway_service("xal_test", tmp_path_factory.mktemp("xal-data")) as env:
        yield env


@pytest.fixture(scope="session")
def app_client(service_env) -> Iterator[TestClient]:
    """The API in this process, on one event loop for the session (the labeling routes' asyncpg
    connections belong to the loop that opened them), without the job sweeper (as before: the
    tests that need one run `xal serve`)."""
    from backend.api.app import create_app

    with TestClient(create_app(sweep_jobs=False)) as client:
        yield client


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
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(log)
    yield process
    stop(process)
    sys.stderr.write(f"\n[worker log: {log}]\n")


def started_project(client, headers: dict, i3a_dir: Path, rows: list[dict], spec: dict, file_name=None) -> int:
    """A project (`spec`, the body of POST /api/projects; a unique name added) whose pool holds
    `rows` (real I3A cells, read in place; imported as `file_name(index, row)`, a path as a zip
    or folder gives it, by default "<image_id>.png"), started, its round 0 done: computed in this
    process (worker.round_job.run_round) or, where the session's worker took it first, by that worker."""
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
        name = file_name or (lambda _index, row: f"{row['image_id']}.png")
        files = [IncomingFile(name(i, r), (i3a_dir / r["image_path"]).read_bytes()) for i, r in enumerate(rows)]
        import_images(session, find_project(session, project_id), files)
        session.commit()
    assert client.post(f"/api/projects/{project_id}/start", headers=headers).status_code == 202
    with new_session() as session:
        round_id = session.scalar(select(Round.id).where(Round.project_id == project_id, Round.number == 0))
    run_round(round_id)  # "skipped" when the session's worker took it first
    wait_for_round(client, headers, project_id, 0)
    return project_id


@pytest.fixture
def open_project(app_client, admin_headers, i3a_dir, i3a_rows) -> int:
    """A started project whose round 0 queued 6 of its 24 pool cells (6 classes, budget 12, steps of 6)."""
    classes = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]
    return started_project(
        app_client,
        admin_headers,
        i3a_dir,
        balanced_sample(i3a_rows, per_class=4, offset=200),
        {"classes": [{"name": c} for c in classes], "budget": 12, "initial_size": 6, "step_size": 6},
    )


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
