"""Round latency through the whole service: from a step's last label to the next batch being
served, on pools of real I3A cells, with 1 or 2 worker processes, and each worker's peak memory.

    .venv/bin/python bench/round_latency.py [--pools 2000 10000 60000] [--workers 1 2] [--steps 3]

Needs the local PostgreSQL and Redis (as the tests do). For each pool size and worker count it
makes a fresh database, imports the pool (I3A has 10,872 cells: a larger pool reuses them, each
copy made distinct by a PNG text chunk naming the copy, so its pixels are the same) and a
400-cell test split, starts the workers (`xal worker`, torch threads = 2 / workers), starts the
project (round 0: `--initial` random cells) and then, `--steps` times, labels the open step
through the API (`queue/next` + `labels`, the ground truth as the annotator) and times how long
after the step's last label the next round's first cell is served. With `--pace S` the annotator
labels one cell every S seconds, the step and then the previous round's reserve while the next
round is computed, and the round's `queue_empty_s` says how long the reserve did not cover the
round (the reserve is sized from that pace: worker.rounds.ReservePlan). Pools above
XAL_SCORING_CHUNK_SIZE are scored in chunks by all workers (worker/chunks.py).

Prints one line per round and a table (median, min-max), and writes everything as JSON to
bench/results/round-latency.json."""

import argparse
import csv
import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from cpu_speed import python_loop_us

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backend.schemas import ModelSettings  # noqa: E402
from backend.testing import start_worker, stop, throwaway_service, wait_for_round, wait_until_ready  # noqa: E402

I3A = Path(os.environ.get("XAL_I3A_DIR", ROOT.parent / "shared" / "data" / "i3a"))
TEST_CELLS = 400
CORES = 2


def png_copy(data: bytes, copy: int) -> bytes:
    """The same PNG with a tEXt chunk before IEND naming the copy: same pixels, other bytes."""
    if copy == 0:
        return data
    body = b"tEXt" + b"xal-copy\x00" + str(copy).encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return data[:-12] + chunk + data[-12:]


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (/proc/PID/stat): what the round cost, whatever
    else the machine was doing."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_configuration(pool_size: int, n_workers: int, args, rows: list[dict], classes: list[str]) -> list[dict]:
    with throwaway_service("xal_bench", XAL_DEVICE=args.device) as env:
        workers: list[subprocess.Popen] = []
        try:
            return _measure(pool_size, n_workers, args, rows, classes, env, workers)
        finally:
            for worker in workers:
                stop(worker)


def _measure(pool_size, n_workers, args, rows, classes, env, workers) -> list[dict]:
    from fastapi.testclient import TestClient

    from backend.api.app import create_app
    from backend.core.db.models import Project
    from backend.core.db.session import new_session
    from backend.core.readers import IncomingFile
    from backend.services.imports import import_images
    from backend.services.users import create_user, issue_token

    with new_session() as session:
        _, secret = issue_token(session, create_user(session, "bench-admin", "admin"))
        session.commit()
    headers = {"Authorization": f"Bearer {secret}"}
    # the whole pool: the reserve is served only while the budget leaves room beyond the next step
    budget = pool_size
    with TestClient(create_app()) as client:
        project_id = client.post(
            "/api/projects",
            headers=headers,
            json={
                "name": "latency",
                "classes": [{"name": c} for c in classes],
                "strategy": args.strategy,
                "budget": budget,
                "initial_size": args.initial,
                "step_size": args.step,
                "model_settings": {"max_epochs": args.max_epochs, "patience": args.patience, "precision": args.precision},
            },
        ).json()["id"]

        started = time.perf_counter()
        test_rows, pool_rows = rows[:TEST_CELLS], rows[TEST_CELLS:]
        truth = {}
        plan = [("test", row, 0, f"test-{row['image_id']}.png") for row in test_rows]
        for i in range(pool_size):
            copy, row = divmod(i, len(pool_rows))
            name = f"{copy}-{pool_rows[row]['image_id']}.png"
            plan.append(("pool", pool_rows[row], copy, name))
            truth[name] = pool_rows[row]["pattern"]
        for start in range(0, len(plan), 2000):
            part = plan[start : start + 2000]
            with new_session() as session:
                project = session.get(Project, project_id)
                for split in ("test", "pool"):
                    files = [
                        IncomingFile(
                            name,
                            png_copy((I3A / row["image_path"]).read_bytes(), copy),
                            reference_class=row["pattern"] if split == "test" else None,
                        )
                        for s, row, copy, name in part
                        if s == split
                    ]
                    if files:
                        import_images(session, project, files, split)
                session.commit()
        import_s = time.perf_counter() - started
        print(f"pool {pool_size}: imported {pool_size} + {TEST_CELLS} cells in {import_s:.0f} s", flush=True)

        threads = args.threads or max(1, CORES // n_workers)
        logs = [Path(env["XAL_DATA_DIR"]) / f"worker-{i}.log" for i in range(n_workers)]
        workers += [start_worker(log, {"OMP_NUM_THREADS": str(threads)}) for log in logs]
        wait_until_ready(logs)

        assert client.post(f"/api/projects/{project_id}/start", headers=headers).status_code == 202
        wait_for_round(client, headers, project_id, 0, timeout=3600, interval=0.2)
        runs = []
        for number in range(1, args.steps + 1):
            cpu_speed = python_loop_us()
            cpu_before = sum(cpu_seconds(w.pid) for w in workers)
            last_label_at = _label_open_step(client, headers, project_id, truth, args.pace)
            reserve_labeled = 0
            if args.pace:  # the annotator goes on, on the previous round's reserve, at its pace
                reserve_labeled, cell = _label_reserve(client, headers, project_id, truth, number, args.pace)
            round_ = wait_for_round(client, headers, project_id, number, timeout=3600, interval=0.2)
            if not args.pace:
                cell = client.post(f"/api/projects/{project_id}/queue/next", headers=headers).json()["cell"]
            latency = time.perf_counter() - last_label_at
            assert cell is not None
            run = {
                "pool": pool_size,
                "workers": n_workers,
                "threads": threads,
                "step": number,
                "labeled": round_["n_labels"],
                "attempts": round_["attempts"],
                "latency_s": latency,
                "pace_s": args.pace,
                "reserve_labeled": reserve_labeled,
                "queue_empty_s": round_["queue_empty_s"],
                "reserve_picked": round_["selection_summary"].get("reserve"),  # for the next round's wait
                "workers_cpu_s": sum(cpu_seconds(w.pid) for w in workers) - cpu_before,
                "load_average": os.getloadavg()[0],
                "python_loop_us": cpu_speed,
                "import_s": import_s if number == 1 else None,
                "worker_peak_rss_mib": [vm_hwm_mib(w.pid) for w in workers],
                "chunks": round_["selection_summary"].get("chunks"),
                **{k: v for k, v in round_["timings"].items()},
            }
            runs.append(run)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()}), flush=True)
        return runs


def _label_open_step(client, headers, project_id: int, truth: dict, pace: float) -> float:
    """Labels the queue, one label every `pace` seconds, until the next round is created; returns
    when its last label was sent."""
    while True:
        cell = client.post(f"/api/projects/{project_id}/queue/next", headers=headers).json()["cell"]
        if cell is None:
            raise RuntimeError("the queue ran dry before the step was complete")
        time.sleep(pace)
        sent = time.perf_counter()
        response = client.post(
            f"/api/projects/{project_id}/labels",
            headers=headers,
            json={"image_id": cell["image_id"], "class_name": truth[cell["filename"]]},
        )
        assert response.status_code == 201, response.text
        progress = client.get(f"/api/projects/{project_id}/rounds", headers=headers).json()
        if progress[-1]["state"] in ("queued", "running"):
            return sent


def _label_reserve(client, headers, project_id: int, truth: dict, number: int, pace: float) -> tuple[int, dict]:
    """While round `number` is computed: one label every `pace` seconds on the reserve the queue
    serves, and when it is used up, asking again every 0.2 s (the round's queue_empty_s counts
    that wait). Returns the reserve cells labeled and the first cell of round `number`."""
    labeled = 0
    while True:
        cell = client.post(f"/api/projects/{project_id}/queue/next", headers=headers).json()["cell"]
        if cell is not None and cell["round"] == number:
            return labeled, cell
        if cell is None:
            time.sleep(0.2)
            continue
        time.sleep(pace)
        response = client.post(
            f"/api/projects/{project_id}/labels",
            headers=headers,
            json={"image_id": cell["image_id"], "class_name": truth[cell["filename"]]},
        )
        assert response.status_code == 201, response.text
        labeled += 1


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still drop its database and workers
    parser = argparse.ArgumentParser()
    parser.add_argument("--pools", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3, help="rounds timed per pool and worker count")
    parser.add_argument("--initial", type=int, default=200, help="round 0's random cells: round 1 trains on these")
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--strategy", default="entropy")
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="seconds per label of an annotator who labels the step at this pace and goes on labeling the reserve "
        "while the next round is computed (0: the step as fast as the API answers, and stop at its last label); the "
        "round's queue_empty_s is the time the reserve did not cover",
    )
    parser.add_argument("--max-epochs", type=int, default=ModelSettings().max_epochs, help="default: the product's")
    parser.add_argument("--patience", type=int, default=None, help="default: none, the product's (no early stop)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: cores / workers)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "round-latency.json"))
    parser.add_argument("--append", action="store_true", help="add to the runs already in --out")
    args = parser.parse_args()

    with open(I3A / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["pattern"] for r in rows})
    import numpy as np

    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    out = Path(args.out)
    results = json.loads(out.read_text())["runs"] if args.append else []
    for pool_size in args.pools:
        for n_workers in args.workers:
            results += run_configuration(pool_size, n_workers, args, rows, classes)
            _write(out, args, results)
    _print_table(results)


def _machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def _summary(results: list[dict]) -> list[dict]:
    summary = []
    for key in sorted({(r["pool"], r["workers"]) for r in results}):
        runs = [r for r in results if (r["pool"], r["workers"]) == key]
        line = {"pool": key[0], "workers": key[1], "runs": len(runs)}
        for field in ("latency_s", "workers_cpu_s", "train_s", "score_s", "maps_s", "load_average"):
            values = [r[field] for r in runs if r.get(field) is not None]
            if values:
                line[field] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        line["worker_peak_rss_mib"] = max(max(r["worker_peak_rss_mib"]) for r in runs)
        summary.append(line)
    return summary


def _write(out: Path, args, results: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"machine": _machine(), "command": " ".join(sys.argv), "summary": _summary(results), "runs": results}, indent=1
        )
    )


def _print_table(results: list[dict]) -> None:
    print(f"\nmachine: {_machine()}")
    print(
        "| pool | workers | rounds | latency s, median (min-max) | workers' CPU s | training s | scoring s | maps s "
        "| load average | peak RSS per worker MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for line in _summary(results):
        cells = []
        for field in ("latency_s", "workers_cpu_s", "train_s", "score_s", "maps_s", "load_average"):
            stats = line.get(field)
            cells.append(f"{stats['median']:.1f} ({stats['min']:.1f}-{stats['max']:.1f})" if stats else "-")
        print(
            f"| {line['pool']:,} | {line['workers']} | {line['runs']} | "
            + " | ".join(cells)
            + f" | {line['worker_peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
