"""Faults, with real processes: a worker killed in the middle of a round, PostgreSQL restarted
while annotators submit, Redis down when a step's last label comes in.

Each test runs its own API process (`xal serve --no-worker`) and worker processes on a
database, a Redis and a data dir of its own, so that stopping them disturbs nothing else on
the machine: the PostgreSQL that is restarted and every Redis are private instances started
here. Rounds are sent again by the API's sweeper (backend.core.outbox.send_waiting_jobs),
which with XAL_JOB_LEASE_SECONDS = LEASE_S looks every LEASE_S / 4 seconds."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from backend.testing import POSTGRES_ADMIN_URL, ROOT, api_is_up, database_url, stop, wait_for, wait_for_round
from tests.conftest import balanced_sample, free_port, require

pytestmark = pytest.mark.slow

LEASE_S = 10  # renewals every 2.5 s: margin for a loaded machine
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
EPOCHS = 60  # long enough (about 20 s here) to kill a worker while it trains


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that the test stops and starts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._answers, timeout=60, message="the private redis-server")

    def stop(self) -> None:
        stop(self.process)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb into a temporary folder, a free port), run
    as the postgres user when the tests run as root, since initdb refuses root."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="xal-faults-pg-"))
        self.port = free_port()
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_owner, str(POSTGRES_BIN / program), *args], check=True, capture_output=True, timeout=300)

    def init(self) -> None:
        self._pg("initdb", "-D", str(self.folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        self._pg(
            "pg_ctl",
            "-D",
            str(self.folder / "data"),
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "-t",
            "300",
            "-o",
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self) -> None:
        """Immediate: the server processes end at once, as in a crash; the next start recovers from the WAL."""
        self._pg("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        if (self.folder / "data" / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class Service:
    """An API process and worker processes on one configuration; their logs in `folder`."""

    def __init__(self, folder: Path, **settings: str) -> None:
        self.folder = folder
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("XAL_")}
        self.env.update(
            {
                "PYTHONPATH": str(ROOT),
                "OMP_NUM_THREADS": "1",
                "XAL_DEVICE": "cpu",
                "XAL_POOL_PRETRAINING_EPOCHS": "0",
                "XAL_JOB_LEASE_SECONDS": str(LEASE_S),
                "XAL_DATA_DIR": str(folder / "xal-data"),
                "XAL_QUEUE": f"xal-faults-{uuid.uuid4().hex[:8]}",
                **settings,
            }
        )
        self.processes: list[subprocess.Popen] = []
        self.api: subprocess.Popen | None = None

    def start_api(self) -> httpx.Client:
        """`xal serve --no-worker`: migrates the database, creates the admin; a client signed in as them."""
        port = free_port()
        self.api = self._start("api", "serve", "--no-worker", "--port", str(port))
        token = wait_for(
            lambda: re.search(r"API token: (\S+)", self.log("api")), timeout=180, message="the API's first-start token"
        ).group(1)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=120)
        wait_for(lambda: api_is_up(client), timeout=120, message="the API")
        return client

    def start_worker(self, name: str) -> subprocess.Popen:
        return self._start(name, "worker")

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                stop(process)

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "backend.cli", *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    redis = PrivateRedis()
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL (never restarted here)."""
    name = f"xal_faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url(name)
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def services(tmp_path) -> Iterator[list[Service]]:
    """Every Service a test starts is stopped at its end (name it after the database and broker
    fixtures, so that it is torn down before them)."""
    started: list[Service] = []
    yield started
    for service in started:
        service.stop_all()
        sys.stderr.write(f"\n[fault test logs: {service.folder}]\n")


def _start_project(client: httpx.Client, i3a_dir: Path, rows: list[dict], **settings) -> tuple[int, dict[str, str]]:
    """A project on these pool cells, started (round 0 queued); returns (id, class of each file)."""
    response = client.post(
        "/api/projects",
        json={
            "name": f"faults-{uuid.uuid4().hex[:6]}",
            "classes": [{"name": c} for c in sorted({r["pattern"] for r in rows})],
            "strategy": "entropy",
            **settings,
        },
    )
    assert response.status_code == 201, response.text
    project_id = response.json()["id"]
    files = [
        ("files", (f"{row['pattern']}-{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes(), "image/png"))
        for row in rows
    ]
    assert client.post(f"/api/projects/{project_id}/images", files=files, data={"split": "pool"}).status_code == 201
    assert client.post(f"/api/projects/{project_id}/start").status_code == 202
    return project_id, {f"{row['pattern']}-{row['image_id']}.png": row["pattern"] for row in rows}


def _annotator(client: httpx.Client, project_id: int) -> dict[str, str]:
    """A new annotator, member of the project; their Authorization headers."""
    user = client.post("/api/users", json={"username": f"annotator-{uuid.uuid4().hex[:6]}", "role": "annotator"})
    assert user.status_code == 201, user.text
    user_id = user.json()["id"]
    assert client.put(f"/api/projects/{project_id}/members/{user_id}").status_code == 204
    token = client.post(f"/api/users/{user_id}/tokens")
    assert token.status_code == 201, token.text
    return {"Authorization": f"Bearer {token.json()['token']}"}


def _label_next(client: httpx.Client, headers: dict, project_id: int, truth: dict[str, str]) -> dict:
    cell = client.post(f"/api/projects/{project_id}/queue/next", headers=headers).json()["cell"]
    assert cell is not None, "the queue served no cell"
    response = client.post(
        f"/api/projects/{project_id}/labels",
        headers=headers,
        json={"image_id": cell["image_id"], "class_name": truth[cell["filename"]]},
    )
    assert response.status_code == 201, response.text
    return cell


def _round(client: httpx.Client, project_id: int, number: int) -> dict | None:
    response = client.get(f"/api/projects/{project_id}/rounds/{number}")
    return response.json() if response.status_code == 200 else None


def _exported(client: httpx.Client, project_id: int) -> dict[str, str]:
    """Each labeled file's class, as the database holds it."""
    rows = client.get(f"/api/projects/{project_id}/labels/export?format=json").json()
    return {row["filename"]: row["class_name"] for row in rows}


def test_a_round_whose_worker_is_killed_runs_again_once_and_the_queue_goes_on(
    fresh_database, private_redis, services, tmp_path, i3a_dir, i3a_rows
):
    service = Service(tmp_path, XAL_DATABASE_URL=fresh_database, XAL_BROKER_URL=private_redis.url)
    services.append(service)
    client = service.start_api()
    first_worker = service.start_worker("worker-1")
    project_id, truth = _start_project(
        client,
        i3a_dir,
        balanced_sample(i3a_rows, per_class=6, offset=600),
        budget=24,
        initial_size=12,
        step_size=12,
        model_settings={"max_epochs": EPOCHS, "patience": EPOCHS, "batch_size": 16},
    )
    annotator = _annotator(client, project_id)
    wait_for_round(client, {}, project_id, 0, timeout=300)
    labeled = [_label_next(client, annotator, project_id, truth)["filename"] for _ in range(12)]

    def computing():
        round_ = _round(client, project_id, 1)
        return (
            round_ is not None
            and round_["state"] == "running"
            and round_["progress"].get("phase") in ("training", "scoring")
        )

    wait_for(computing, timeout=300, interval=0.2, message="round 1 to be computed")
    first_worker.send_signal(signal.SIGKILL)
    first_worker.wait(timeout=60)
    assert _round(client, project_id, 1)["state"] in ("running", "queued")  # nobody computes it now

    service.start_worker("worker-2")
    round_1 = wait_for_round(client, {}, project_id, 1, timeout=600)
    assert round_1["attempts"] == 2  # the killed attempt and one rerun, no more
    assert round_1["n_labels"] == 12 and round_1["n_selected"] == 12
    rounds = client.get(f"/api/projects/{project_id}/rounds").json()
    assert [r["number"] for r in rounds] == [0, 1]
    models = client.get(f"/api/models?project_id={project_id}").json()
    assert [m["id"] for m in models] == [round_1["model_version_id"]]  # the killed attempt stored nothing
    assert _exported(client, project_id) == {filename: truth[filename] for filename in labeled}  # no label lost

    # the queue serves round 1's cells; while round 2 trains, a third worker starts and the
    # sweeper passes several times: neither takes the round from its live worker
    for _ in range(12):
        assert _label_next(client, annotator, project_id, truth)["round"] == 1
    wait_for(
        lambda: (_round(client, project_id, 2) or {}).get("state") == "running",
        timeout=300,
        interval=0.2,
        message="round 2 to start",
    )
    service.start_worker("worker-3")
    round_2 = wait_for_round(client, {}, project_id, 2, timeout=600)
    assert round_2["attempts"] == 1 and round_2["n_labels"] == 24
    assert len(_exported(client, project_id)) == 24
    assert client.get(f"/api/projects/{project_id}/progress").json()["state"] == "finished"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    require(
        (POSTGRES_BIN / "initdb").is_file() and (POSTGRES_BIN / "pg_ctl").is_file(),
        f"PostgreSQL 15 server binaries not found in {POSTGRES_BIN}",
    )
    if os.geteuid() == 0:
        require(shutil.which("runuser") is not None, "runuser is needed to run initdb as the postgres user")
    postgres = PrivatePostgres()
    try:
        postgres.init()
        postgres.start()
        yield postgres
    finally:
        postgres.remove()


def test_submissions_during_a_postgres_restart_succeed_or_ask_to_retry_and_none_is_lost(
    private_postgres, private_redis, services, tmp_path, i3a_dir, i3a_rows
):
    service = Service(tmp_path, XAL_DATABASE_URL=private_postgres.url, XAL_BROKER_URL=private_redis.url)
    services.append(service)
    client = service.start_api()
    service.start_worker("worker")
    project_id, truth = _start_project(
        client,
        i3a_dir,
        balanced_sample(i3a_rows, per_class=10, offset=700),
        budget=60,
        initial_size=60,
        step_size=10,
        model_settings={"max_epochs": 1, "batch_size": 16},
    )
    wait_for_round(client, {}, project_id, 0, timeout=300)

    acknowledged: list[tuple[int, str]] = []  # labels the API answered 201 to
    responses: list[httpx.Response] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def annotate(headers: dict) -> None:
        try:
            with httpx.Client(base_url=str(client.base_url), headers=headers, timeout=120) as own:
                while not done.is_set():
                    leased = own.post(f"/api/projects/{project_id}/queue/next")
                    responses.append(leased)
                    cell = leased.json().get("cell") if leased.status_code == 200 else None
                    if cell is not None:
                        class_name = truth[cell["filename"]]
                        label = own.post(
                            f"/api/projects/{project_id}/labels",
                            json={"image_id": cell["image_id"], "class_name": class_name},
                        )
                        responses.append(label)
                        if label.status_code == 201:
                            acknowledged.append((cell["image_id"], class_name))
                    time.sleep(0.2)  # people take a moment per cell
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            failures.append(error)

    annotators = [threading.Thread(target=annotate, args=(_annotator(client, project_id),)) for _ in range(3)]
    for thread in annotators:
        thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 6, timeout=300, message="labels before the restart")
        private_postgres.stop()
        during = client.post(f"/api/projects/{project_id}/queue/next")
        assert during.status_code == 503 and int(during.headers["Retry-After"]) > 0
        assert "database" in during.json()["detail"]
        private_postgres.start()
        before = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= before + 6, timeout=300, message="labels after the restart")
    finally:
        done.set()
        for thread in annotators:
            thread.join(timeout=300)

    assert failures == []
    assert service.api.poll() is None  # the same API process served before, during and after
    statuses = {response.status_code for response in responses}
    assert statuses <= {200, 201, 503}, [(r.status_code, r.text) for r in responses if r.status_code not in (200, 201, 503)]
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) > 0 and "database" in response.json()["detail"]
    with psycopg.connect(private_postgres.url.replace("+psycopg", "")) as conn:
        stored = dict(
            conn.execute(
                "SELECT l.image_id, c.name FROM labels l JOIN project_classes c ON c.id = l.class_id "
                "WHERE l.project_id = %s AND l.retracted_at IS NULL AND l.superseded_at IS NULL",
                (project_id,),
            ).fetchall()
        )
    assert dict(acknowledged).items() <= stored.items()  # every acknowledged label is in the database
    assert len(set(image_id for image_id, _ in acknowledged)) == len(acknowledged)


def test_labels_are_stored_while_redis_is_down_and_the_round_runs_once_it_is_back(
    fresh_database, private_redis, services, tmp_path, i3a_dir, i3a_rows
):
    service = Service(tmp_path, XAL_DATABASE_URL=fresh_database, XAL_BROKER_URL=private_redis.url)
    services.append(service)
    client = service.start_api()
    service.start_worker("worker")
    project_id, truth = _start_project(
        client,
        i3a_dir,
        balanced_sample(i3a_rows, per_class=6, offset=800),
        budget=24,
        initial_size=12,
        step_size=12,
        model_settings={"max_epochs": 2, "batch_size": 16},
    )
    annotator = _annotator(client, project_id)
    wait_for_round(client, {}, project_id, 0, timeout=300)
    for _ in range(11):
        _label_next(client, annotator, project_id, truth)

    private_redis.stop()
    _label_next(client, annotator, project_id, truth)  # the step's last label: round 1 cannot be sent
    assert len(_exported(client, project_id)) == 12
    assert _round(client, project_id, 1)["state"] == "queued"
    # the sweeper keeps trying, and the round stays queued (not failed) meanwhile
    wait_for(
        lambda: service.log("api").count("could not send Round id") >= 3,
        timeout=300,
        message="the sweeper to try the broker again",
    )
    assert _round(client, project_id, 1)["state"] == "queued"
    waiting = client.post(f"/api/projects/{project_id}/queue/next", headers=annotator)
    assert waiting.status_code == 200 and waiting.json()["round_state"] == "queued"  # annotators are told, not failed

    private_redis.start()
    round_1 = wait_for_round(client, {}, project_id, 1, timeout=600)
    assert round_1["attempts"] == 1 and round_1["n_labels"] == 12
    assert _label_next(client, annotator, project_id, truth)["round"] == 1


def test_a_pool_clustering_whose_worker_is_killed_runs_again_once(
    fresh_database, private_redis, services, tmp_path, i3a_dir, i3a_rows
):
    """Pool clusterings are jobs like rounds: the same lease, the same sweeper."""
    service = Service(tmp_path, XAL_DATABASE_URL=fresh_database, XAL_BROKER_URL=private_redis.url)
    services.append(service)
    client = service.start_api()
    first_worker = service.start_worker("worker-1")
    response = client.post(
        "/api/projects",
        json={"name": "faults-clustering", "classes": [{"name": c} for c in sorted({r["pattern"] for r in i3a_rows})]},
    )
    project_id = response.json()["id"]
    rows = balanced_sample(i3a_rows, per_class=6, offset=900)
    files = [("files", (f"{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes(), "image/png")) for row in rows]
    assert client.post(f"/api/projects/{project_id}/images", files=files).status_code == 201
    url = f"/api/projects/{project_id}/clustering"
    assert (
        client.post(url, json={"representation": "autoencoder", "pretrain_epochs": 20, "cluster_epochs": 5}).status_code
        == 202
    )

    def clustering() -> dict:
        return client.get(url).json()["clustering"]

    wait_for(
        lambda: clustering()["progress"].get("phase") == "training" and clustering()["progress"]["epoch"] >= 1,
        timeout=300,
        interval=0.2,
        message="the clustering to train",
    )
    first_worker.send_signal(signal.SIGKILL)
    first_worker.wait(timeout=60)
    service.start_worker("worker-2")
    finished = wait_for(
        lambda: clustering()["state"] in ("done", "failed") and clustering(), timeout=600, message="the clustering to finish"
    )
    assert finished["state"] == "done", finished["error"]
    assert sum(finished["metrics"]["sizes"]) == len(rows)
    with psycopg.connect(fresh_database.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT count(*), max(attempts) FROM pool_clusterings").fetchone() == (1, 2)
