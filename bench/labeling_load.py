"""Load on the labeling API: N concurrent simulated annotators, each its own user and token,
each labeling leased cells in a loop with no think time, against a real uvicorn server process
on loopback and the real PostgreSQL.

    .venv/bin/python bench/labeling_load.py [--annotators 50] [--duration 30] [--workers 1]
        [--rates 0 100] [--repeats 3] [--pool 3000] [--labels-before 0]
        [--patterns label-leases-next next-then-label] [--code . ../xal-before] [--database-pools 0]
        [--pythons .venv/bin/python other-venv/bin/python]

`--patterns`: how an annotator asks for cells. `label-leases-next` is the browser's: one
`POST /labels` per cell with `lease_next`, whose answer leases the next cell (`queue/next`
only for the first cell and when a label's answer has none). `next-then-label` is two requests
per cell, `POST /queue/next` then `POST /labels`, as a REST client may do, and as every client
did before `lease_next` (the only pattern an older checkout in `--code` understands). Each
annotator's first `queue/next` comes before the measured window, at a server that has just
started (its pool connects, its statements are prepared), and is reported apart
(`first_next_ms`); `next_ms` holds the ones in the window.

`--rates`: the labels per second the annotators aim at together, each pacing itself (0: no
pause, as fast as the server answers). A paced run shows the latency at that load; one that
falls short of its rate has saturated the server. `--code`: checkouts whose API is measured,
run after run in turn (for example a worktree of an older commit beside this one), so that
both see the same machine; `--pythons` likewise runs the API under each interpreter given (a
virtual environment's python with this project's requirements). `--database-pools`: the API's
XAL_DATABASE_POOL_SIZE, per run in turn like `--code` (0: its default). `--labels-before`:
labels the project holds already (its earlier rounds), to show whether a label costs more in a
project that holds many.

It sets everything up itself: a fresh PostgreSQL database (dropped at the end), migrated by
this checkout, its users, and per run a fresh project written directly in SQL as its earlier
rounds would have left it: `--pool` cells (database rows only: the labeling routes never read
the images), `--labels-before` of them labeled, the rest queued in the open round's step.
Then VACUUM ANALYZE (see _analyze); after the run the project is deleted, so that every run
meets the same database, and each repeat runs every setting once. The load comes from this
process (an asyncio aiohttp client), the API runs in its own uvicorn process(es); all share the
machine's cores. Prints p50/p90/p99/max latency of next and submit, labels per second and CPU
time per label (API, database, load generator) per run, and writes everything to
bench/results/labeling-load.json, each run with `api_plus_pg_cpu_ms_per_label`."""

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import aiohttp
import httpx
import psycopg

from cpu_speed import python_loop_us

ROOT = Path(__file__).resolve().parents[1]
GC_TRACE_HOOK = Path(__file__).resolve().parent / "gc_trace"  # its sitecustomize times the API's collections
sys.path.insert(0, str(ROOT))
from backend.testing import POSTGRES_ADMIN_URL, api_is_up, stop, throwaway_service, wait_for  # noqa: E402

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30, help="seconds of load per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="uvicorn worker processes to try")
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[0],
        help="labels/s the annotators aim at together; 0: no pause (saturation)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per worker count and rate")
    parser.add_argument("--pool", type=int, default=3000, help="cells of the project (one fresh project per run)")
    parser.add_argument("--labels-before", type=int, nargs="+", default=[0], help="labels the project holds before the load")
    parser.add_argument(
        "--patterns",
        nargs="+",
        choices=["label-leases-next", "next-then-label"],
        default=["label-leases-next"],
        help="requests per cell: a label that leases the next cell (the browser), or queue/next then the label",
    )
    parser.add_argument("--code", nargs="+", default=[str(ROOT)], help="checkouts whose API to measure, in turn")
    parser.add_argument("--database-pools", type=int, nargs="+", default=[0], help="the API pool sizes (0: default)")
    parser.add_argument("--pythons", nargs="+", default=[sys.executable], help="interpreters to run the API with, in turn")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--loop", default="auto", help="uvicorn's --loop (auto: uvloop where installed)")
    parser.add_argument("--http", default="auto", help="uvicorn's --http (auto: httptools where installed)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "labeling-load.json"))
    args = parser.parse_args()

    with throwaway_service("xal_bench", OMP_NUM_THREADS="1") as env:
        runs = _measure(args, env["XAL_DATABASE_URL"].rsplit("/", 1)[1])
    summary = _summary(runs)
    for line in summary["lines"]:
        print(line)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": vars(args),
        "summary": summary["by_setting"],
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


def _measure(args, database: str) -> list[dict]:
    annotators = [_annotator(i) for i in range(args.annotators)]
    codes = {path: _describe(path) for path in args.code}
    base_url = f"http://127.0.0.1:{args.port}"
    runs = []
    # Each repeat runs every setting once, so that the VM's drift over the bench spreads over all
    # settings alike instead of reading as a difference between them.
    plan = [
        (n_workers, labels_before, rate, repeat, code, pattern, database_pool, python)
        for repeat in range(args.repeats)
        for n_workers in args.workers
        for labels_before in args.labels_before
        for rate in args.rates
        for code in args.code
        for pattern in args.patterns
        for database_pool in args.database_pools
        for python in args.pythons
    ]
    for n_workers, labels_before, rate, repeat, code, pattern, database_pool, python in plan:
        project_id = _project_in_progress(args.pool, labels_before, annotators)
        _analyze(database)
        gc_trace = Path(tempfile.mkstemp(prefix="xal-gc-")[1])
        server = _start_server(code, n_workers, args.port, args.loop, args.http, gc_trace, database_pool, python)
        try:
            with httpx.Client(base_url=base_url, timeout=60) as client:
                wait_for(lambda: api_is_up(client), 120, message="the API")
            load_before, cpu_speed = os.getloadavg(), python_loop_us()
            wal_before = _wal_and_checkpoints(database)
            with CpuMeter(server, database) as cpu:
                load_started = time.time()
                run = asyncio.run(_load(base_url, project_id, annotators, args.duration, rate, pattern))
                load_ended = time.time()
            wal_after = _wal_and_checkpoints(database)
        finally:
            stop(server)
        run["labels_in_database"] = _labels_in_database(project_id) - labels_before
        _drop_project(database, project_id)
        run["gc_pauses"] = _gc_pauses(gc_trace, load_started, load_ended)
        gc_trace.unlink()
        labels = max(run["labels"], 1)
        per_label = {k: round(v * 1000 / labels, 2) for k, v in cpu.seconds.items()}
        run.update(
            code=codes[code] + (f" on {python}" if len(args.pythons) > 1 else ""),
            python=python,
            pattern=pattern,
            workers=n_workers,
            database_pool=database_pool or None,
            labels_before=labels_before,
            rate=rate,
            repeat=repeat,
            project_id=project_id,
            python_loop_us=round(cpu_speed, 1),
            loadavg_before=load_before,
            loadavg_after=os.getloadavg(),
            database_connections={"opened": cpu.backends_started, "most_at_once": cpu.most_backends_at_once},
            cpu_ms_per_label=per_label,
            database_per_label={
                "user_ms": round(cpu.database_split["user_s"] * 1000 / labels, 2),
                "system_ms": round(cpu.database_split["system_s"] * 1000 / labels, 2),
                "minor_faults": round(cpu.database_split["minor_faults"] / labels, 1),
            },
            api_plus_pg_cpu_ms_per_label=round(per_label["api"] + per_label["database"], 2),
        )
        wal = {key: wal_after[key] - wal_before[key] for key in wal_before}
        run["checkpoints_during_run"] = wal.pop("checkpoints")
        run["wal_per_label"] = {key: round(value / labels, 2) for key, value in wal.items()}
        runs.append(run)
        _print_run(run)
    return runs


def _describe(path: str) -> str:
    """The checkout's commit, and whether it has changes on top."""
    described = subprocess.run(
        ["git", "-C", path, "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return described.stdout.strip() or path


def _gc_pauses(trace: Path, started: float, ended: float) -> dict:
    """The API's garbage collections during the load (bench/gc_trace): a full one (generation
    2) walks every object the process holds, and every request in flight waits it out."""
    pauses = [line.split() for line in trace.read_text().splitlines()]
    during = [(int(generation), float(ms)) for at, generation, ms in pauses if started <= float(at) <= ended]
    full = [ms for generation, ms in during if generation == 2]
    return {
        "full_collections": len(full),
        "longest_full_ms": max(full, default=0.0),
        "longest_ms": max((ms for _, ms in during), default=0.0),
    }


def _start_server(
    code: str,
    workers: int,
    port: int,
    loop: str,
    http: str,
    gc_trace: Path,
    database_pool: int,
    python: str = sys.executable,
) -> subprocess.Popen:
    pool = {"XAL_DATABASE_POOL_SIZE": str(database_pool)} if database_pool else {}
    return subprocess.Popen(
        [
            python,
            "-m",
            "uvicorn",
            "backend.api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            loop,
            "--http",
            http,
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=code,
        env={**os.environ, **pool, "PYTHONPATH": f"{code}{os.pathsep}{GC_TRACE_HOOK}", "XAL_GC_TRACE": str(gc_trace)},
    )


def _annotator(index: int) -> dict:
    from backend.core.db.session import new_session
    from backend.services.users import create_user, issue_token

    with new_session() as session:
        user = create_user(session, f"annotator-{index:02d}", "annotator")
        _, secret = issue_token(session, user)
        session.commit()
        return {"id": user.id, "headers": {"Authorization": f"Bearer {secret}"}}


def _project_in_progress(pool: int, labels_before: int, annotators: list[dict]) -> int:
    """A project of `pool` cells, the annotators its members, whose earlier rounds labeled
    `labels_before` of them and whose open round queued the rest (written directly: the images
    have no files, the rounds no models; the labeling routes read neither)."""
    from sqlalchemy import insert

    from backend.core.db.models import Image, Label, Project, ProjectClass, ProjectMember, Round, Selection
    from backend.core.db.session import new_session

    rng = random.Random(pool * 7919 + labels_before)
    with new_session() as session:
        project = Project(
            name=f"load-{uuid.uuid4().hex[:6]}", budget=pool, initial_size=labels_before or pool,
            step_size=pool - labels_before, strategy="entropy", state="active",
        )  # fmt: skip
        session.add(project)
        session.flush()
        classes = [ProjectClass(project_id=project.id, name=c, key=str(i + 1), position=i) for i, c in enumerate(CLASSES)]
        session.add_all(classes)
        session.add_all(ProjectMember(project_id=project.id, user_id=a["id"]) for a in annotators)
        session.flush()
        images = session.scalars(
            insert(Image).returning(Image.id),
            [
                {
                    "project_id": project.id,
                    "content_hash": uuid.uuid4().hex * 2,
                    "filename": f"cell-{i:06d}.png",
                    "width": 72,
                    "height": 72,
                }
                for i in range(pool)
            ],
        ).all()
        sizes = [labels_before, pool - labels_before] if labels_before else [pool]
        rounds = [
            Round(project_id=project.id, number=n, state="done", n_labels=sum(sizes[:n]), n_selected=size)
            for n, size in enumerate(sizes)
        ]
        rounds[-1].open_cells = sizes[-1]
        session.add_all(rounds)
        session.flush()
        start = 0
        for round_, size in zip(rounds, sizes):
            labeled = round_ is not rounds[-1]
            session.execute(
                insert(Selection),
                [
                    {
                        "round_id": round_.id,
                        "image_id": images[start + rank],
                        "rank": rank,
                        "score": 1.0 - rank / size,
                        "labeled": labeled,
                        # what an entropy round tells of each cell
                        "details": {"strategy": "entropy", "probabilities": [1 / 6] * 6, "predicted": rank % 6},
                    }
                    for rank in range(size)
                ],
            )
            if labeled:
                session.execute(
                    insert(Label),
                    [
                        {
                            "project_id": project.id,
                            "image_id": images[start + rank],
                            "class_id": rng.choice(classes).id,
                            "user_id": annotators[rank % len(annotators)]["id"],
                            "round_id": round_.id,
                            "duration_ms": 1500,
                        }
                        for rank in range(size)
                    ],
                )
            start += size
        session.commit()
        return project.id


class CpuMeter:
    """CPU time (user + system) the API's processes, the database's backends and this process
    (the load generator) use while it is open. Per label it says what the cores bought, which
    other jobs on a shared machine change far less than they change latency. Backends come and
    go (the pool opens and closes overflow connections), so they are sampled every 0.2 s."""

    def __init__(self, server: subprocess.Popen, database: str):
        self.server, self.database = server, database
        # pid: (user s, system s, minor page faults) when first seen and when last seen
        self.backend_cpu: dict[int, tuple[tuple[float, float, int], tuple[float, float, int]]] = {}
        self.backends_started = 0
        self.most_backends_at_once = 0
        self._stop = threading.Event()

    def __enter__(self) -> "CpuMeter":
        self._sample(during_run=False)
        self._api_start, self._self_start = self._api_cpu(), self._self_cpu()
        self._sampler = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._sampler.join()
        self._sample()
        # where the backends' time went: a change in system time or page faults points at the
        # machine (memory, scheduling) rather than at the statements
        self.database_split = {
            name: sum(last[i] - first[i] for first, last in self.backend_cpu.values())
            for i, name in enumerate(("user_s", "system_s", "minor_faults"))
        }
        self.seconds = {
            "api": self._api_cpu() - self._api_start,
            "database": self.database_split["user_s"] + self.database_split["system_s"],
            "load_generator": self._self_cpu() - self._self_start,
        }

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self, during_run: bool = True) -> None:
        """Backends first seen during the run count from zero; those there before, from now."""
        marker = f" {self.database} ".encode()
        alive = 0
        for path in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                title = path.read_bytes()
            except OSError:
                continue
            if not title.startswith(b"postgres:") or marker not in title:
                continue
            alive += 1
            stat = _stat(path.parent / "stat")
            if stat is None:
                continue
            pid, counters = stat.pid, (stat.user_s, stat.system_s, stat.minor_faults)
            if pid not in self.backend_cpu:
                self.backends_started += during_run
                self.backend_cpu[pid] = ((0.0, 0.0, 0) if during_run else counters, counters)
            else:
                self.backend_cpu[pid] = (self.backend_cpu[pid][0], counters)
        self.most_backends_at_once = max(self.most_backends_at_once, alive)

    def _api_cpu(self) -> float:
        """The server's CPU and its worker processes'."""
        stats = (_stat(path) for path in Path("/proc").glob("[0-9]*/stat"))
        return sum(s.cpu_s for s in stats if s is not None and self.server.pid in (s.pid, s.ppid))

    @staticmethod
    def _self_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


class ProcStat(NamedTuple):
    pid: int
    ppid: int
    user_s: float
    system_s: float
    minor_faults: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    return _stat(Path(f"/proc/{pid}/stat")).cpu_s


def _stat(path: Path) -> ProcStat | None:
    """A process's counters from /proc/PID/stat; None when the process is gone."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return ProcStat(int(path.parent.name), int(fields[1]), int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7]))


def _analyze(database: str) -> None:
    """What autovacuum does after a bulk insert or delete. This machine's PostgreSQL runs with
    autovacuum off (its CI configuration); without statistics the planner walks every current
    label for each queued cell it considers, and a lease takes hundreds of milliseconds once a
    few thousand labels exist."""
    with psycopg.connect(_database_url(database), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _drop_project(database: str, project_id: int) -> None:
    """Deletes a run's project (its rows cascade), so that each run meets the same database: kept,
    the tables grew run by run, and a setting run later met bigger tables."""
    with psycopg.connect(_database_url(database), autocommit=True) as conn:
        conn.execute("DELETE FROM projects WHERE id = %s", (project_id,))


def _database_url(database: str) -> str:
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"


def _ok(response: httpx.Response) -> dict:
    assert response.status_code in (200, 201, 202), f"{response.request.url}: {response.status_code} {response.text}"
    return response.json()


class Answer(NamedTuple):
    """A response's status and body, read in full before its connection goes back to the pool."""

    status: int
    text: str

    def json(self) -> dict:
        return json.loads(self.text)


async def _load(base_url: str, project_id: int, annotators: list[dict], duration: float, rate: float, pattern: str) -> dict:
    first_next_ms: list[float] = []
    next_ms: list[float] = []
    submit_ms: list[float] = []
    counts = {"labels": 0, "empty_queue": 0, "errors": 0}
    errors: dict[str, int] = {}
    interval = len(annotators) / rate if rate else 0.0  # each annotator's share of the rate
    next_url = f"/api/projects/{project_id}/queue/next"

    async def ask_next(client: aiohttp.ClientSession, headers: dict, times_ms: list[float]) -> tuple[bool, dict | None]:
        """`queue/next`, timed into `times_ms`: whether the server answered 200, and the cell it leased."""
        started = time.perf_counter()
        answer = await _post(client, next_url, headers)
        times_ms.append((time.perf_counter() - started) * 1000)
        if not isinstance(answer, Answer) or answer.status != 200:
            _count_error(counts, errors, "next", answer)
            return False, None
        return True, answer.json()["cell"]

    async def first_lease(client: aiohttp.ClientSession, headers: dict) -> dict | None:
        """Before the measured window: the annotators arrive within a second (or one interval)
        at a server that has just started, whose pool connects and prepares its statements."""
        await asyncio.sleep(random.Random(headers["Authorization"]).uniform(0, interval or 1.0))
        return (await ask_next(client, headers, first_next_ms))[1]

    async def annotate(client: aiohttp.ClientSession, headers: dict, deadline: float, cell: dict | None) -> None:
        rng = random.Random(headers["Authorization"])
        due = time.perf_counter() + rng.uniform(0, interval)  # spread out, not all at once
        lease_next = pattern == "label-leases-next"
        while time.perf_counter() < deadline:
            if interval:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                due += interval
            if cell is None:
                answered, cell = await ask_next(client, headers, next_ms)
                if cell is None:  # an error (counted by ask_next) or an empty queue
                    counts["empty_queue"] += answered
                    await asyncio.sleep(0.1)
                    continue
            started = time.perf_counter()
            body = {"image_id": cell["image_id"], "class_name": rng.choice(CLASSES)}
            answer = await _post(
                client, f"/api/projects/{project_id}/labels", headers, {**body, "lease_next": True} if lease_next else body
            )
            submit_ms.append((time.perf_counter() - started) * 1000)
            cell = None
            if isinstance(answer, Answer) and answer.status == 201:
                counts["labels"] += 1
                if lease_next:
                    cell = (answer.json()["next"] or {}).get("cell")
            else:
                _count_error(counts, errors, "submit", answer)

    # aiohttp, not httpx: its C parser costs the load generator a fraction of httpx's CPU, which
    # shares the machine's cores with the server it measures. Idle connections are dropped before
    # uvicorn's 5 s keep-alive timeout closes them under a request.
    connector = aiohttp.TCPConnector(limit=len(annotators), keepalive_timeout=2)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        cells = await asyncio.gather(*(first_lease(client, a["headers"]) for a in annotators))
        started = time.perf_counter()
        deadline = started + duration
        await asyncio.gather(*(annotate(client, a["headers"], deadline, c) for a, c in zip(annotators, cells)))
        elapsed = time.perf_counter() - started
    return {
        "annotators": len(annotators),
        "target_labels_per_s": rate,
        "seconds": round(elapsed, 2),
        **counts,
        "error_kinds": errors,
        "labels_per_s": round(counts["labels"] / elapsed, 1),
        "requests_per_s": round((len(next_ms) + len(submit_ms)) / elapsed, 1),
        "first_next_ms": _percentiles(first_next_ms),
        "next_ms": _percentiles(next_ms),
        "submit_ms": _percentiles(submit_ms),
    }


async def _post(client: aiohttp.ClientSession, url: str, headers: dict, body: dict | None = None) -> Answer | Exception:
    """The answer, or the error when the connection failed (counted as an error, not a crash)."""
    try:
        async with client.post(url, headers=headers, json=body) as response:
            return Answer(response.status, await response.text())
    except (aiohttp.ClientError, TimeoutError) as error:
        return error


def _count_error(counts: dict, errors: dict, route: str, answer: Answer | Exception) -> None:
    counts["errors"] += 1
    key = f"{route} {answer.status}: {answer.text[:120]}" if isinstance(answer, Answer) else f"{route}: {answer!r}"
    errors[key] = errors.get(key, 0) + 1


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "n": len(values),
        "p50": round(cuts[49], 1),
        "p90": round(cuts[89], 1),
        "p99": round(cuts[98], 1),
        "max": round(max(values), 1),
    }


def _wal_and_checkpoints(database: str) -> dict:
    """The server's WAL so far (records, full-page images, bytes) and its checkpoints: a page's
    first change after a checkpoint starts writes the whole page to the WAL, which a run that
    overlaps a checkpoint pays for in PostgreSQL's CPU."""
    with psycopg.connect(_database_url(database), autocommit=True) as conn:
        records, fpi, size = conn.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()
        checkpoints = conn.execute("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter").fetchone()[0]
    return {"wal_records": records, "wal_fpi": fpi, "wal_bytes": int(size), "checkpoints": checkpoints}


def _labels_in_database(project_id: int) -> int:
    from sqlalchemy import func, select

    from backend.core.db.models import Label
    from backend.core.db.session import new_session

    with new_session() as session:
        return session.scalar(select(func.count(Label.id)).where(Label.project_id == project_id))


def _print_run(run: dict) -> None:
    f, n, s = run["first_next_ms"], run["next_ms"], run["submit_ms"]
    print(
        f"{run['code']} {run['pattern']} workers={run['workers']} database pool={run['database_pool'] or 'default'} "
        f"labels before={run['labels_before']} "
        f"rate={run['rate'] or 'max'} run={run['repeat']}: {run['labels_per_s']} labels/s "
        f"({run['labels']} in {run['seconds']} s, {run['labels_in_database']} in the database), "
        f"first lease p50/max {f.get('p50')}/{f.get('max')} ms, "
        f"next p50/p90/p99/max {n.get('p50')}/{n.get('p90')}/{n.get('p99')}/{n.get('max')} ms, "
        f"submit {s.get('p50')}/{s.get('p90')}/{s.get('p99')}/{s.get('max')} ms, "
        f"errors {run['errors']}, empty queue {run['empty_queue']}, load {run['loadavg_before'][0]:.2f}, "
        f"python loop {run['python_loop_us']} us; "
        f"CPU ms per label: {run['cpu_ms_per_label']} (API + PostgreSQL {run['api_plus_pg_cpu_ms_per_label']}; "
        f"PostgreSQL's {run['database_per_label']}), "
        f"database connections: {run['database_connections']}, garbage collections: {run['gc_pauses']}, "
        f"WAL per label: {run['wal_per_label']}, checkpoints during the run: {run['checkpoints_during_run']}",
        flush=True,
    )
    for kind, count in run["error_kinds"].items():
        print(f"  {count} x {kind}")


def _summary(runs: list[dict]) -> dict:
    by_setting, lines = {}, []

    def setting(run: dict) -> tuple:
        return run["code"], run["pattern"], run["workers"], run["database_pool"], run["labels_before"], run["rate"]

    for code, pattern, n_workers, database_pool, labels_before, rate in sorted({setting(r) for r in runs}, key=str):
        mine = [r for r in runs if setting(r) == (code, pattern, n_workers, database_pool, labels_before, rate)]

        def spread(values):
            if not values:
                return {"median": None, "min": None, "max": None}
            return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}

        entry = {
            "labels_per_s": spread([r["labels_per_s"] for r in mine]),
            "api_plus_pg_cpu_ms_per_label": spread([r["api_plus_pg_cpu_ms_per_label"] for r in mine]),
            **{
                f"cpu_ms_per_label_{part}": spread([r["cpu_ms_per_label"][part] for r in mine])
                for part in ("api", "database", "load_generator")
            },
            **{
                f"{route}_{q}_ms": spread([r[f"{route}_ms"][q] for r in mine if r[f"{route}_ms"]["n"]])
                for route in ("first_next", "next", "submit")
                for q in ("p50", "p99")
            },
            "gc_full_collections": spread([r["gc_pauses"]["full_collections"] for r in mine]),
            "gc_longest_ms": spread([r["gc_pauses"]["longest_ms"] for r in mine]),
        }
        pool = f", database pool {database_pool}" if database_pool else ""
        name = f"{code}, {pattern}, {n_workers} workers{pool}, {labels_before} labels before, rate {rate or 'max'}"
        by_setting[name] = entry
        lines.append(
            f"{name}, {len(mine)} runs, median (min-max): "
            f"{_fmt(entry['labels_per_s'])} labels/s; first lease p50 {_fmt(entry['first_next_p50_ms'])} ms, "
            f"p99 {_fmt(entry['first_next_p99_ms'])} ms; next p50 {_fmt(entry['next_p50_ms'])} ms, "
            f"p99 {_fmt(entry['next_p99_ms'])} ms; submit p50 {_fmt(entry['submit_p50_ms'])} ms, "
            f"p99 {_fmt(entry['submit_p99_ms'])} ms; CPU ms per label: API + PostgreSQL "
            f"{_fmt(entry['api_plus_pg_cpu_ms_per_label'])}, API {_fmt(entry['cpu_ms_per_label_api'])}, "
            f"database {_fmt(entry['cpu_ms_per_label_database'])}, "
            f"load generator {_fmt(entry['cpu_ms_per_label_load_generator'])}; "
            f"the API's full garbage collections {_fmt(entry['gc_full_collections'])}, "
            f"longest collection {_fmt(entry['gc_longest_ms'])} ms"
        )
    return {"by_setting": by_setting, "lines": lines}


def _fmt(spread: dict) -> str:
    return f"{spread['median']} ({spread['min']}-{spread['max']})"


if __name__ == "__main__":
    main()
