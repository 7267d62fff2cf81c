"""Scoring speed of the explainable strategies on this machine (issue #3):
relevance maps per second per method at batch 1, 32 and 128, and the time of one full
XAL selection (relevance of L and U + clustering + distances) for a pool of real cells,
for the `pixel` and `concept` representations.

    .venv/bin/python bench/xal_selection_speed.py [--pool 10000] [--labeled 500] [--cells 256]

The network is trained for 2 epochs on the labeled cells first (speed does not depend on
how well it is trained). Writes bench/results/xal-selection-speed.json."""

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
I3A = Path(os.environ.get("XAL_I3A_DIR", ROOT.parent / "shared" / "data" / "i3a"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--labeled", type=int, default=500)
    parser.add_argument("--cells", type=int, default=256, help="cells timed per method and batch size")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "xal-selection-speed.json"))
    args = parser.parse_args()

    import torch

    from backend.core.images import load_cell
    from worker.ml.network import ParallelResidualNet
    from worker.ml.relevance import METHODS, relevance_maps
    from worker.ml.strategies import SelectionContext, rank_pool
    from worker.ml.training import TrainingConfig, train_classifier

    with open(I3A / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["pattern"] for r in rows})
    order = np.random.default_rng(0).permutation(len(rows))
    # a pool larger than the data set reuses cells, which is fine for timing
    picked = [rows[order[i % len(rows)]] for i in range(args.labeled + args.pool)]
    images = np.stack([load_cell((I3A / r["image_path"]).read_bytes()) for r in picked])
    labels = np.array([classes.index(r["pattern"]) for r in picked])
    labeled, pool = images[: args.labeled], images[args.labeled :]
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = train_classifier(
        ParallelResidualNet(len(classes)), labeled, labels[: args.labeled], TrainingConfig(max_epochs=2), device
    ).model

    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, cpu",
        "command": " ".join(sys.argv),
        "maps_per_second": {},
        "selection_seconds": {},
    }
    cells = pool[: args.cells]
    for method in METHODS:
        for batch_size in (1, 32, 128):
            started = time.perf_counter()
            relevance_maps(model, cells, method, device, batch_size=batch_size)
            rate = len(cells) / (time.perf_counter() - started)
            results["maps_per_second"][f"{method}@{batch_size}"] = rate
            print(f"{method:12s} batch {batch_size:3d}: {rate:6.1f} maps/s", flush=True)

    for representation in ("concept", "pixel"):
        context = SelectionContext(
            model=model,
            device=device,
            labeled_images=labeled,
            labeled_labels=labels[: args.labeled],
            pool_size=len(pool),
            load_pool_images=lambda: pool,
            rng=np.random.default_rng(0),
            options={"representation": representation, "centres": "clusters"},
        )
        started = time.perf_counter()
        ranking = rank_pool("xal-margin", context)
        seconds = time.perf_counter() - started
        results["selection_seconds"][representation] = {"total": seconds, **ranking.summary["timings"]}
        print(
            f"xal-margin {representation:7s}: {seconds:6.1f} s for {len(pool)} pool + {args.labeled} labeled cells "
            f"({ranking.summary['timings']})",
            flush=True,
        )

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
