"""PostgreSQL's CPU per label for the browser's labeling statement (a label that leases the next
cell, backend.services.annotating._LABEL_THEN_NEXT), in one connection, with no HTTP and no
concurrency: what the statement itself costs the server, free of the load bench's spread.

    .venv/bin/python bench/label_statement_cpu.py [--pool 60000] [--labels 300] [--blocks 6]

Two databases, each a fresh migrated one with a project of `--pool` queued cells and 50
annotators (bench/labeling_load.py writes them): `as-is`, and `hot-leases`, where the
selections table has no index on leased_by_id and leaves 20% of each page free (fillfactor 80),
so that a lease, which changes no indexed column, can be a HOT update (a new row version on the
same page and no new index entries) instead of one that adds an entry to each of the table's
seven indexes. Blocks of `--labels` labels alternate between the two, each annotator in turn
labeling their leased cell and leasing the next; the server process's CPU (/proc) over each
block, divided by its labels. Prints per block and the median per variant; writes
bench/results/label-statement-cpu.json."""

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg.rows import namedtuple_row

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labeling_load  # noqa: E402

from cpu_speed import python_loop_us  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backend.core.db.models import utcnow  # noqa: E402
from backend.services import annotating  # noqa: E402
from backend.testing import POSTGRES_ADMIN_URL, throwaway_service  # noqa: E402

VARIANTS = {
    "as-is": [],
    "hot-leases": ["DROP INDEX ix_selections_leased_by_id", "ALTER TABLE selections SET (fillfactor = 80)"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=60000)
    parser.add_argument("--labels", type=int, default=300, help="labels per block")
    parser.add_argument("--blocks", type=int, default=6, help="blocks per variant, alternating")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "label-statement-cpu.json"))
    args = parser.parse_args()

    sql, first = _psycopg(annotating._LABEL_THEN_NEXT), _psycopg(annotating._NEXT)
    with ExitStack() as stack:
        setups = {}
        for variant, ddl in VARIANTS.items():
            env = stack.enter_context(throwaway_service("xal_stmt", OMP_NUM_THREADS="1"))
            database = env["XAL_DATABASE_URL"].rsplit("/", 1)[1]
            url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
            with psycopg.connect(url, autocommit=True) as conn:
                for statement in ddl:
                    conn.execute(statement)
            annotators = [labeling_load._annotator(i) for i in range(50)]
            project_id = labeling_load._project_in_progress(args.pool, 0, annotators)
            labeling_load._analyze(database)
            conn = stack.enter_context(psycopg.connect(url, autocommit=True, row_factory=namedtuple_row))
            secrets = [a["headers"]["Authorization"].split()[1] for a in annotators]
            cells = {}
            for secret in secrets:  # each annotator's first lease
                now = utcnow()
                params = _params(secret, project_id, now)
                cells[secret] = conn.execute(first, params, prepare=True).fetchone()
            setups[variant] = {"conn": conn, "secrets": secrets, "cells": cells, "project_id": project_id}
            setups[variant]["pid"] = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

        blocks = []
        for block in range(args.blocks):
            for variant, setup in setups.items():
                cpu_before, started = _cpu(setup["pid"]), time.perf_counter()
                labeled = 0
                while labeled < args.labels:
                    secret = setup["secrets"][labeled % len(setup["secrets"])]
                    image_id = setup["cells"][secret].cell_image_id
                    now = utcnow()
                    params = {
                        **_params(secret, setup["project_id"], now),
                        "image_id": image_id,
                        "class_name": labeling_load.CLASSES[labeled % 6],
                        "duration_ms": None,
                        "after_reveal": False,
                    }
                    row = setup["conn"].execute(sql, params, prepare=True).fetchone()
                    assert row.outcome == "ok" and row.label_id and row.cell_image_id, row
                    setup["cells"][secret] = row
                    labeled += 1
                seconds = time.perf_counter() - started
                cpu = _cpu(setup["pid"]) - cpu_before
                blocks.append(
                    {
                        "block": block,
                        "variant": variant,
                        "labels": labeled,
                        "server_cpu_ms_per_label": round(cpu * 1000 / labeled, 3),
                        "wall_ms_per_label": round(seconds * 1000 / labeled, 3),
                        "python_loop_us": round(python_loop_us(), 1),
                    }
                )
                print(blocks[-1], flush=True)
        summary = {
            variant: statistics.median(b["server_cpu_ms_per_label"] for b in blocks if b["variant"] == variant)
            for variant in VARIANTS
        }
        for variant, median in summary.items():
            print(f"{variant}: PostgreSQL CPU per label, median of {args.blocks} blocks: {median:.3f} ms")
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": vars(args),
        "variants": VARIANTS,
        "median_server_cpu_ms_per_label": summary,
        "blocks": blocks,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


def _psycopg(sql: str) -> str:
    """The statement with psycopg's placeholders for SQLAlchemy's `:name` ones (not `::type` casts)."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


def _params(secret: str, project_id: int, now) -> dict:
    return {
        "token_hash": annotating.token_hash(secret),
        "project_id": project_id,
        "now": now,
        "expires": now + timedelta(seconds=600),
    }


def _cpu(pid: int) -> float:
    return labeling_load._stat(Path(f"/proc/{pid}/stat")).cpu_s


if __name__ == "__main__":
    main()
