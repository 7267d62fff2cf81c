"""50 annotators at once on one queue, through a real uvicorn server (two worker processes,
each with its own connection pool) and the real PostgreSQL: no cell is leased to two of them
at a time, and every label a client was told was stored is in the database exactly once.

A real server rather than TestClient: the requests then run in parallel across processes and
threads, over real connections, the way a lab's annotators reach the service."""

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from backend.testing import ROOT, stop
from tests.conftest import balanced_sample, free_port, make_user, mislabeled_selections, started_project

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]
ANNOTATORS = 50
CELLS_PER_CLASS = 40  # 240 cells: about five each, so leases, labels and skips interleave


@pytest.fixture(scope="module")
def api_server(service_env):
    """The API in its own uvicorn process with two workers, on a free loopback port."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "backend.api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        # at most 2 x 15 connections: with the other tests' processes, under PostgreSQL's 100
        cwd=ROOT,
        env={**os.environ, **service_env, "XAL_DATABASE_MAX_OVERFLOW": "5"},
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base_url}/api/health").status_code == 200:
                break
        except httpx.TransportError:
            if time.monotonic() > deadline or server.poll() is not None:
                stop(server)
                raise
        time.sleep(0.5)
    yield base_url
    stop(server)


@pytest.fixture
def queued_project(app_client, admin_headers, i3a_dir, i3a_rows):
    """A started project whose round 0 queued its whole pool (budget = pool): one step."""
    rows = balanced_sample(i3a_rows, per_class=CELLS_PER_CLASS, offset=300)
    project_id = started_project(
        app_client,
        admin_headers,
        i3a_dir,
        rows,
        {
            "classes": [{"name": c} for c in CLASSES],
            "strategy": "random",
            "budget": len(rows),
            "initial_size": len(rows),
            "step_size": len(rows),
        },
    )
    return project_id, len(rows)


class Holders:
    """Which client holds which cell, as the clients see it; fails on a second holder."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holder: dict[int, str] = {}
        self.double_leases: list[tuple[int, str, str]] = []

    def take(self, image_id: int, who: str) -> None:
        with self._lock:
            holder = self._holder.get(image_id)
            if holder not in (None, who):
                self.double_leases.append((image_id, holder, who))
            self._holder[image_id] = who

    def give_up(self, image_id: int) -> None:
        """Before the request that ends the lease: from then on the cell may go to someone else."""
        with self._lock:
            self._holder.pop(image_id, None)


def _annotate(base_url: str, project_id: int, username: str, headers: dict, holders: Holders) -> dict:
    """Leases and labels until the queue is empty; skips its first cell now and then (once),
    which puts it back in the queue for the others. Half of the annotators label as the browser
    does, with `lease_next`: the label's answer leases their next cell."""
    rng = random.Random(username)
    acknowledged, skipped, failures = [], [], []
    may_skip = rng.random() < 0.3
    lease_next = rng.random() < 0.5
    cell = None
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        while True:
            if cell is None:
                response = client.post(f"/api/projects/{project_id}/queue/next")
                if response.status_code != 200:
                    failures.append(("next", response.status_code, response.text))
                    break
                cell = response.json()["cell"]
                if cell is None:
                    break
            holders.take(cell["image_id"], username)
            time.sleep(rng.uniform(0, 0.02))  # looks at the cell, then asks again: the same cell
            again = client.post(f"/api/projects/{project_id}/queue/next")
            if again.status_code != 200 or (again.json()["cell"] or {}).get("image_id") != cell["image_id"]:
                failures.append(("next again", cell["image_id"], again.status_code, again.text))
            holders.give_up(cell["image_id"])  # the label or skip below ends the lease
            if may_skip:
                may_skip = False
                response = client.post(
                    f"/api/projects/{project_id}/queue/skip", json={"image_id": cell["image_id"], "reason": "skip"}
                )
                if response.status_code == 200:
                    skipped.append(cell["image_id"])
                else:
                    failures.append(("skip", response.status_code, response.text))
                cell = None
                continue
            class_name = rng.choice(CLASSES)
            response = client.post(
                f"/api/projects/{project_id}/labels",
                json={"image_id": cell["image_id"], "class_name": class_name, "lease_next": lease_next},
            )
            if response.status_code == 201:
                label = response.json()
                acknowledged.append((label["id"], cell["image_id"], class_name))
                cell = (label["next"] or {}).get("cell") if lease_next else None
            else:
                failures.append(("label", response.status_code, response.text))
                cell = None
    return {"username": username, "acknowledged": acknowledged, "skipped": skipped, "failures": failures}


def test_fifty_annotators_never_share_a_cell_and_no_label_is_lost_or_doubled(api_server, queued_project):
    from backend.core.db.models import CellNote, Image, Label, ProjectClass, Round, Selection, User
    from backend.core.db.session import new_session

    project_id, n_cells = queued_project
    annotators = [make_user("annotator", project_ids=[project_id]) for _ in range(ANNOTATORS)]
    holders = Holders()
    start = threading.Barrier(ANNOTATORS)

    def run(annotator):
        start.wait()  # all at once
        return _annotate(api_server, project_id, *annotator, holders)

    with ThreadPoolExecutor(ANNOTATORS) as pool:
        results = list(pool.map(run, annotators))

    failures = [(r["username"], *f) for r in results for f in r["failures"]]
    assert failures == []
    assert holders.double_leases == []
    acknowledged = {
        label_id: (r["username"], image_id, class_name)
        for r in results
        for label_id, image_id, class_name in r["acknowledged"]
    }
    assert sum(len(r["acknowledged"]) for r in results) == len(acknowledged) == n_cells
    assert sum(1 for r in results if r["acknowledged"]) > ANNOTATORS // 2  # the work was really shared

    with new_session() as session:
        stored = {
            label.id: (username, label.image_id, class_name, label.retracted_at, label.superseded_at)
            for label, username, class_name in session.execute(
                select(Label, User.username, ProjectClass.name)
                .join(User, User.id == Label.user_id)
                .join(ProjectClass, ProjectClass.id == Label.class_id)
                .where(Label.project_id == project_id)
            )
        }
        pool = set(session.scalars(select(Image.id).where(Image.project_id == project_id, Image.split == "pool")))
        still_leased = session.scalar(
            select(func.count(Selection.id))
            .join(Round, Round.id == Selection.round_id)
            .where(Round.project_id == project_id, Selection.leased_by_id.is_not(None))
        )
        notes = session.scalar(select(func.count(CellNote.id)).where(CellNote.project_id == project_id))
        rounds = list(session.scalars(select(Round.number).where(Round.project_id == project_id).order_by(Round.number)))

    # every acknowledged label is stored once, as acknowledged, still current; nothing else is stored
    assert set(stored) == set(acknowledged)
    assert {label_id: row[:3] for label_id, row in stored.items()} == acknowledged
    assert all(retracted is None and superseded is None for *_, retracted, superseded in stored.values())
    per_image = Counter(image_id for _, image_id, *_ in stored.values())
    assert set(per_image) == pool and set(per_image.values()) == {1}  # each cell labeled exactly once
    assert still_leased == 0
    assert notes == sum(len(r["skipped"]) for r in results)
    assert rounds == [0, 1]  # the step's last label opened the next round, once
    assert mislabeled_selections(project_id) == []
