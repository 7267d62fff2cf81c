"""Times one round of the budget loop (fine-tune + evaluate + score) on a pool of real
I3A cells, through the same code the worker runs (worker.rounds.compute_round), on this
machine's CPU unless XAL_DEVICE says otherwise.

    .venv/bin/python bench/round_latency.py [--pool 2000] [--labeled 60 200] [--repeats 3]

Prints one line per run and a summary (median, min-max) per labeled-set size, and
writes them as JSON to bench/results/round-latency.json."""
import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
I3A = Path(os.environ.get("XAL_I3A_DIR", ROOT.parent / "shared" / "data" / "i3a"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", type=int, default=2000)
    parser.add_argument("--labeled", type=int, nargs="+", default=[60, 200])
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strategy", default="entropy")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "round-latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("XAL_DATA_DIR", tempfile.mkdtemp(prefix="xal-bench-"))
    os.environ.setdefault("XAL_DEVICE", "cpu")

    import torch

    from backend.blobs import get_blob_store
    from worker.rounds import RoundInputs, compute_round
    from worker.ml.training import TrainingConfig

    with open(I3A / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["pattern"] for r in rows})
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))
    store = get_blob_store()
    needed = max(args.labeled) + args.pool + args.test
    hashes = [store.put((I3A / rows[i]["image_path"]).read_bytes()) for i in order[:needed]]
    targets = np.array([classes.index(rows[i]["pattern"]) for i in order[:needed]])

    results = []
    for n_labeled in args.labeled:
        for repeat in range(args.repeats):
            labeled = slice(0, n_labeled)
            pool = slice(max(args.labeled), max(args.labeled) + args.pool)
            test = slice(max(args.labeled) + args.pool, needed)
            inputs = RoundInputs(
                project_id=1, number=1 + repeat, channel="luminance", class_names=classes, strategy=args.strategy, strategy_options={},
                model_settings={**TrainingConfig().__dict__, "seed": repeat}, batch_size=max(1, args.pool // 20),
                parent_model_id=None, parent_checkpoint=None, transfer=False,
                labeled_ids=list(range(n_labeled)), labeled_hashes=hashes[labeled], labeled_classes=targets[labeled],
                pool_ids=list(range(args.pool)), pool_hashes=hashes[pool],
                test_hashes=hashes[test], test_classes=targets[test],
            )
            started = time.perf_counter()
            result = compute_round(inputs)
            total = time.perf_counter() - started
            run = {"labeled": n_labeled, "pool": args.pool, "repeat": repeat, "total_s": total,
                   "epochs": result["training"]["epochs_run"], "test_aca": result["metrics"]["aca"], **result["timings"]}
            results.append(run)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}), flush=True)

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads, device {os.environ['XAL_DEVICE']}"
    print(f"\nmachine: {machine}")
    summary = []
    for n_labeled in args.labeled:
        runs = [r for r in results if r["labeled"] == n_labeled]
        line = {"labeled": n_labeled, "pool": args.pool, "runs": len(runs)}
        for key in ("total_s", "train_s", "score_s", "load_s", "evaluate_s", "epochs"):
            values = [r[key] for r in runs]
            line[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        summary.append(line)
        print(f"labeled {n_labeled:4d}, pool {args.pool}: round {line['total_s']['median']:.1f} s "
              f"(min {line['total_s']['min']:.1f}, max {line['total_s']['max']:.1f}); "
              f"train {line['train_s']['median']:.1f} s over {line['epochs']['median']:.0f} epochs; "
              f"score {line['score_s']['median']:.1f} s; load {line['load_s']['median']:.1f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "command": " ".join(sys.argv), "summary": summary,
                                          "runs": results}, indent=1))


if __name__ == "__main__":
    main()
