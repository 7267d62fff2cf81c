"""Contrastive pretraining of the parallel networks on the I3A pool of the label-efficiency
experiment (worker.simulate.split_by_hash: the pool leaves out the test split and the validation
set), once for every case and seed. Writes the checkpoint and its record into --cache, where
`xal simulate --curve` finds it.

    .venv/bin/python bench/pretrain_pool.py --data ../shared/data/i3a --cache ../al-cache --epochs 20
"""
import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from worker.ml.pretext import PretextConfig, pretrain_contrastive
from worker.ml.training import save_checkpoint
from worker.pretrain import CHANNEL, read_labeled_folder
from worker.rounds import load_cells
from worker.simulate import _blob_store_under, split_by_hash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--validation-fraction", type=float, default=0.03)
    args = parser.parse_args()
    config = PretextConfig(epochs=args.epochs, bf16=args.bf16)
    with _blob_store_under(Path(args.cache)) as store:
        cells = read_labeled_folder(Path(args.data), None, store)
        split = split_by_hash(cells, args.test_fraction, args.validation_fraction)
        pool = load_cells([cells.hashes[i] for i in split.pool], CHANNEL)
        started = time.process_time()
        result = pretrain_contrastive(
            pool, config, torch.device("cpu"), n_classes=len(cells.class_names),
            progress=lambda epoch, total, loss: print(f"epoch {epoch}/{total} loss {loss:.4f}", file=sys.stderr, flush=True))
        key = store.put(save_checkpoint(result.model))
    record = {"checkpoint": key, "config": asdict(config), "pool": split.sizes,
              "history": result.history, "seconds": result.seconds, "cpu_seconds": time.process_time() - started,
              "torch_threads": torch.get_num_threads()}
    (Path(args.cache) / "contrastive-pool.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "history"}))


if __name__ == "__main__":
    main()
