"""PostgreSQL's CPU per label for the browser's labeling statement (a label that leases the next
cell, backend.services.annotating._LABEL_THEN_NEXT), in one connection, with no HTTP and no
concurrency: what the statement itself costs the server, free of the load bench's spread.

    .venv/bin/python bench/label_statement_cpu.py [--pool 60000] [--projects 4] [--labels 300] [--blocks 6]

One database per variant, each a fresh migrated one with `--projects` projects of `--pool`
queued cells and the same 50 annotators (bench/labeling_load.py writes them), who hold a lease
in each project, as annotators of several projects do; the last project is labeled. Variants:
- `as-is`: the schema and the plans as the API has them (one generic plan per connection);
- `leased-by-id-alone`: the index on selections.leased_by_id that migration 0013 replaced by
  one on (leased_by_id, round_id);
- `custom-plans`: as-is, but PostgreSQL plans the statement again at every call, as it may
  choose to without the API's `plan_cache_mode`;
- `token-use-in-statement`: the statement notes the token's last use itself, in an UPDATE CTE,
  as it did before the access check took that over, and selections keep the index on round_id
  alone that migration 0014 dropped.
Blocks of `--labels` labels alternate between the variants, each annotator in turn labeling
their leased cell and leasing the next; the server process's CPU (/proc) over each block,
divided by its labels. Prints per block and the median per variant; writes
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
from pathlib import Path

import psycopg
from psycopg.rows import namedtuple_row

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labeling_load  # noqa: E402

from cpu_speed import python_loop_us  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backend.core.db.models import utcnow  # noqa: E402
from backend.services import annotating, labeling  # noqa: E402
from backend.testing import throwaway_service  # noqa: E402

GENERIC = "-c plan_cache_mode=force_generic_plan"
VARIANTS = {
    "as-is": {"ddl": [], "options": GENERIC},
    "leased-by-id-alone": {
        "ddl": [
            "CREATE INDEX ix_selections_leased_by_id ON selections (leased_by_id)",
            "DROP INDEX ix_selections_leased_by_id_round_id",
        ],
        "options": GENERIC,
    },
    "custom-plans": {"ddl": [], "options": "-c plan_cache_mode=force_custom_plan"},
    "token-use-in-statement": {
        "ddl": ["CREATE INDEX ix_selections_round_id ON selections (round_id)"],
        "options": GENERIC,
        "caller_also": "," + annotating._TOKEN_USED,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=60000)
    parser.add_argument("--projects", type=int, default=4, help="projects whose cells the annotators hold leases in")
    parser.add_argument("--labels", type=int, default=300, help="labels per block")
    parser.add_argument("--blocks", type=int, default=6, help="blocks per variant, alternating")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "label-statement-cpu.json"))
    args = parser.parse_args()

    first = _psycopg(annotating._NEXT)
    with ExitStack() as stack:
        setups = {}
        for variant, setting in VARIANTS.items():
            env = stack.enter_context(throwaway_service("xal_stmt", OMP_NUM_THREADS="1"))
            database = env["XAL_DATABASE_URL"].rsplit("/", 1)[1]
            url = labeling_load._database_url(database)
            with psycopg.connect(url, autocommit=True) as conn:
                for statement in setting["ddl"]:
                    conn.execute(statement)
            annotators = [labeling_load._annotator(i) for i in range(50)]
            secrets = [a["headers"]["Authorization"].split()[1] for a in annotators]
            conn = stack.enter_context(
                psycopg.connect(url, autocommit=True, row_factory=namedtuple_row, options=setting["options"])
            )
            for _ in range(args.projects):
                project_id = labeling_load._project_in_progress(args.pool, 0, annotators)
                labeling_load._analyze(database)
                cells = {}
                for secret in secrets:  # each annotator's lease in this project
                    cells[secret] = conn.execute(first, _params(secret, project_id, utcnow()), prepare=True).fetchone()
            caller = annotating._CALLER + setting.get("caller_also", "")
            sql = _psycopg(annotating._LABEL_THEN_NEXT.replace(annotating._CALLER, caller, 1))
            setups[variant] = {"conn": conn, "secrets": secrets, "cells": cells, "project_id": project_id, "sql": sql}
            setups[variant]["pid"] = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

        blocks = []
        for block in range(args.blocks):
            for variant, setup in setups.items():
                cpu_before, started = labeling_load.cpu_seconds(setup["pid"]), time.perf_counter()
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
                    row = setup["conn"].execute(setup["sql"], params, prepare=True).fetchone()
                    assert row.outcome == "ok" and row.label_id and row.cell_image_id, row
                    setup["cells"][secret] = row
                    labeled += 1
                seconds = time.perf_counter() - started
                cpu = labeling_load.cpu_seconds(setup["pid"]) - cpu_before
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
        "expires": labeling.lease_expiry(now),
    }


if __name__ == "__main__":
    main()
