"""`xal serve` with no XAL_* settings: SQLite, Celery's filesystem broker and a worker
process under ./xal-data — nothing but Python — running the same code as production:
Alembic migrations, the Celery round task, real training."""

import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from backend.testing import ROOT, api_is_up, stop, wait_for, wait_for_round
from tests.conftest import balanced_sample, free_port

pytestmark = pytest.mark.slow


def _serve_embedded(folder, port: int, log_path) -> subprocess.Popen:
    """`xal serve` with no XAL_* settings, run in `folder`, its output in `log_path`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("XAL_")}
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)],
            cwd=folder,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_the_service_runs_the_loop_on_the_embedded_default(tmp_path, i3a_dir, i3a_rows):
    port = free_port()
    log_path = tmp_path / "serve.log"
    server = _serve_embedded(tmp_path, port, log_path)
    try:
        token = wait_for(
            lambda: re.search(r"API token: (\S+)", log_path.read_text()), timeout=120, message="the first-start token"
        ).group(1)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        wait_for(lambda: api_is_up(client), timeout=60, message="the API")
        assert "sqlite" in log_path.read_text() and "filesystem://" in log_path.read_text()

        classes = sorted({row["pattern"] for row in i3a_rows})
        project = client.post(
            "/api/projects",
            json={
                "name": "embedded",
                "classes": [{"name": c} for c in classes],
                "budget": 12,
                "initial_size": 6,
                "step_size": 6,
                "model_settings": {"max_epochs": 1, "batch_size": 16},
            },
        ).json()
        rows = balanced_sample(i3a_rows, per_class=4, offset=400)
        files = [
            ("files", (f"{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes(), "image/png")) for row in rows
        ]
        assert client.post(f"/api/projects/{project['id']}/images", files=files).status_code == 201
        assert client.post(f"/api/projects/{project['id']}/start").status_code == 202
        truth = {f"{row['image_id']}.png": row["pattern"] for row in rows}
        for number in (0, 1):
            assert wait_for_round(client, {}, project["id"], number, timeout=180)["n_selected"] == 6
            lease_next = number == 0  # step 0 as the browser labels: each label leases the next cell
            cell = client.post(f"/api/projects/{project['id']}/queue/next").json()["cell"]
            for position in range(6):
                answer = client.post(
                    f"/api/projects/{project['id']}/labels",
                    json={"image_id": cell["image_id"], "class_name": truth[cell["filename"]], "lease_next": lease_next},
                )
                assert answer.status_code == 201, answer.text
                if position < 5:
                    leased = (
                        answer.json()["next"]
                        if lease_next
                        else client.post(f"/api/projects/{project['id']}/queue/next").json()
                    )
                    cell = leased["cell"]
                elif lease_next:
                    assert answer.json()["next"]["cell"] is None  # the step is done; round 1 is computed
        final = wait_for_round(client, {}, project["id"], 2, timeout=180)
        assert final["n_labels"] == 12 and final["model_version_id"]
        assert (tmp_path / "xal-data" / "xal.db").is_file()
    finally:
        stop(server)
    wait_for(lambda: not _workers_in(tmp_path), timeout=30, message="the worker to stop with the server")


def test_a_first_start_keeps_to_its_data_folder_and_ends_with_the_projects_lines(tmp_path):
    """Nothing but ./xal-data where `xal serve` runs (the filesystem broker's exchange tables
    included), and its address, the admin's password and token after everything uvicorn and the
    worker print as they start."""
    folder = tmp_path / "run"
    folder.mkdir()
    log_path = tmp_path / "serve.log"
    port = free_port()
    server = _serve_embedded(folder, port, log_path)
    try:
        wait_for(lambda: "API token:" in log_path.read_text(), timeout=120, message="the first-start token")
        time.sleep(3)  # for anything that would still come
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    finally:
        stop(server)
    assert os.listdir(folder) == ["xal-data"]
    rule = lines[-1]
    assert set(rule) == {"-"} and lines[-6] == rule, lines[-12:]
    assert lines[-5].startswith(f"XAL on http://127.0.0.1:{port}/")
    assert "sqlite" in lines[-4] and "filesystem://" in lines[-4] and lines[-4].endswith("worker: ready")
    assert lines[-3].startswith("First start: created user 'admin' with password ")
    assert re.fullmatch(r"API token: \S+", lines[-2])
    before = "\n".join(lines[:-6])
    assert "Uvicorn running on" in before and "Connected to filesystem://" in before
    assert "-------------- [queues]" not in before and "No hostname was supplied" not in before


def _workers_in(folder) -> list[int]:
    """Worker processes still running in the server's folder."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(folder) and b"worker" in open(f"/proc/{pid}/cmdline", "rb").read():
                found.append(int(pid))
        except OSError:
            continue
    return found
