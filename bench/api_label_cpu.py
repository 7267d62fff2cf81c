"""The API's CPU per label, one request at a time: what a label costs the API process itself,
free of the load bench's concurrency, so that a change worth a few percent shows.

    .venv/bin/python bench/api_label_cpu.py [--code . ../xal-before] [--pauses-ms 0 10]
        [--pythons .venv/bin/python other-venv/bin/python] [--pool 30000] [--labels 400] [--blocks 10]

Each checkout in `--code`, under each interpreter in `--pythons` (a virtual environment's
python with this project's requirements; default: this one), serves its own uvicorn process (as
bench/labeling_load.py starts it) on its own project of `--pool` queued cells in one fresh
database migrated by this checkout; 20 annotators take turns, each label leasing the
annotator's next cell (`lease_next`, the browser's one request per cell), sent one after the
other from one client. Blocks of `--labels`
labels alternate between the servers, and between `--pauses-ms`, the pause before each request
(0: back to back; a pause lets the server's event loop fall idle between requests, as it does
when annotators are paced). Per block, the API process's CPU (/proc) divided by its labels. A
machine whose speed drifts moves neighbouring blocks alike, so with two settings the paired
ratio per block (second / first) is the figure; PostgreSQL's share is
bench/label_statement_cpu.py's. Writes bench/results/api-label-cpu.json."""

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labeling_load  # noqa: E402

from cpu_speed import python_loop_us  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backend.testing import api_is_up, stop, throwaway_service, wait_for  # noqa: E402

ANNOTATORS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", nargs="+", default=[str(ROOT)], help="checkouts whose API to measure, in turn")
    parser.add_argument("--pauses-ms", type=float, nargs="+", default=[0.0], help="pause before each request, in turn")
    parser.add_argument("--pythons", nargs="+", default=[sys.executable], help="interpreters to run the API with, in turn")
    parser.add_argument("--pool", type=int, default=30000, help="queued cells of each server's project")
    parser.add_argument("--labels", type=int, default=400, help="labels per block")
    parser.add_argument("--blocks", type=int, default=10, help="blocks per checkout, alternating")
    parser.add_argument("--port", type=int, default=8801)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "api-label-cpu.json"))
    args = parser.parse_args()

    servers, gc_traces = [], []
    with throwaway_service("xal_api_cpu", OMP_NUM_THREADS="1") as env:
        try:
            annotators = [labeling_load._annotator(i) for i in range(ANNOTATORS)]
            checkouts = []
            for index, (code, python) in enumerate((code, python) for code in args.code for python in args.pythons):
                project_id = labeling_load._project_in_progress(args.pool, 0, annotators)
                port = args.port + index
                gc_trace = Path(tempfile.mkstemp(prefix="xal-gc-")[1])  # the server's hook writes there; not read
                gc_traces.append(gc_trace)
                server = labeling_load._start_server(code, 1, port, "auto", "auto", gc_trace, 0, python)
                servers.append(server)
                with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                    wait_for(lambda: api_is_up(client), 120, message="the API")
                name = labeling_load._describe(code) + (f", {python}" if len(args.pythons) > 1 else "")
                checkouts.append({"name": name, "server": server, "port": port, "project_id": project_id, "cells": {}})
            labeling_load._analyze(env["XAL_DATABASE_URL"].rsplit("/", 1)[1])
            for checkout in checkouts:  # connections opened, statements prepared
                asyncio.run(_label(checkout, annotators, 200))
            blocks = []
            for block in range(args.blocks):
                for checkout in checkouts:
                    for pause_ms in args.pauses_ms:
                        cpu_before = labeling_load.cpu_seconds(checkout["server"].pid)
                        asyncio.run(_label(checkout, annotators, args.labels, pause_ms / 1000))
                        cpu_ms = (labeling_load.cpu_seconds(checkout["server"].pid) - cpu_before) * 1000 / args.labels
                        blocks.append(
                            {
                                "block": block,
                                "setting": f"{checkout['name']}, pause {pause_ms:g} ms",
                                "api_cpu_ms_per_label": round(cpu_ms, 3),
                                "python_loop_us": round(python_loop_us(), 1),
                            }
                        )
                        print(blocks[-1], flush=True)
        finally:
            for server in servers:
                stop(server)
            for gc_trace in gc_traces:
                gc_trace.unlink()
    settings = list(dict.fromkeys(b["setting"] for b in blocks))
    per_setting = {name: [b["api_cpu_ms_per_label"] for b in blocks if b["setting"] == name] for name in settings}
    summary = {name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in per_setting.items()}
    if len(settings) == 2:
        ratios = [second / first for first, second in zip(*per_setting.values())]
        summary["paired_ratio_second_to_first"] = {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        }
    print(json.dumps(summary, indent=2))
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": vars(args),
        "summary": summary,
        "blocks": blocks,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


async def _label(checkout: dict, annotators: list[dict], labels: int, pause_s: float = 0.0) -> None:
    """`labels` labels, one request at a time, the annotators taking turns."""
    project, cells = checkout["project_id"], checkout["cells"]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{checkout['port']}") as client:
        for i in range(labels):
            if pause_s:
                await asyncio.sleep(pause_s)
            headers = annotators[i % len(annotators)]["headers"]
            token = headers["Authorization"]
            if cells.get(token) is None:
                async with client.post(f"/api/projects/{project}/queue/next", headers=headers) as response:
                    cells[token] = (await response.json())["cell"]
            body = {"image_id": cells[token]["image_id"], "class_name": labeling_load.CLASSES[i % 6], "lease_next": True}
            async with client.post(f"/api/projects/{project}/labels", headers=headers, json=body) as response:
                answer = await response.json()
                assert response.status == 201, answer
                cells[token] = answer["next"]["cell"]


if __name__ == "__main__":
    main()
