"""How good are the pool's features before the first label? For the network pretrained without
labels on the pool (worker.ml.pretext, the checkpoint `xal simulate --curve` starts from) and, as
baselines, a network at random initialisation and the standardised pixels:

- linear probe: a logistic regression on the features of 1% and 5% of the pool's cells (labels
  drawn stratified, 3 seeds), ACA and MCA on the test split;
- clustering: k-means (k = 6) of the pool's features, ACC (Hungarian), NMI and ARI against the
  classes, as bench/results/deep-clustering-i3a.csv scores the thesis's deep clustering.

    .venv/bin/python bench/pretext_probe.py --data ../shared/data/i3a --cache CACHE --out bench/results/pretext-probe.json
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from worker.experiments.cells import CHANNEL, read_labeled_folder, split_by_hash
from worker.experiments.store import blob_store_under
from worker.ml.cluster_metrics import clustering_scores
from worker.ml.deep_clustering import standardise_cells
from worker.ml.metrics import classification_metrics
from worker.ml.network import ParallelResidualNet
from worker.ml.pretext import embed_cells
from worker.ml.training import load_checkpoint, stratified_holdout
from worker.rounds import load_cells

CPU = torch.device("cpu")


def probe(features: np.ndarray, labels: np.ndarray, pool: np.ndarray, test: np.ndarray, share: float, seed: int) -> dict:
    train = pool[stratified_holdout(labels[pool], share, np.random.default_rng(seed))[1]]
    scaler = StandardScaler().fit(features[train])
    classifier = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(features[train]), labels[train])
    predicted = classifier.predict(scaler.transform(features[test]))
    metrics = classification_metrics(labels[test], predicted, int(labels.max()) + 1)
    return {"n_labels": int(len(train)), "aca": metrics["aca"], "mca": metrics["mca"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    record = json.loads((Path(args.cache) / "contrastive-pool.json").read_text())
    with blob_store_under(Path(args.cache)) as store:
        cells = read_labeled_folder(Path(args.data), None, store)
        split = split_by_hash(cells, 0.2, 0.03)
        images = load_cells(cells.hashes, CHANNEL)
        pretrained = load_checkpoint(store.get(record["checkpoint"]))
    torch.manual_seed(0)
    representations = {
        "contrastive (pretrained on the pool)": lambda: embed_cells(pretrained, images, CPU),
        "random initialisation": lambda: embed_cells(ParallelResidualNet(len(cells.class_names)), images, CPU),
        "standardised pixels": lambda: standardise_cells(images).reshape(len(images), -1),
    }
    results = {
        "pretraining": {k: v for k, v in record.items() if k != "history"},
        "sizes": split.sizes,
        "final_pretext_loss": record["history"][-1]["loss"],
        "representations": {},
    }
    for name, compute in representations.items():
        started = time.perf_counter()
        features = compute()
        entry = {"dims": int(features.shape[1])}
        if features.shape[1] <= 1024:  # a probe on 12,544 pixels is not what is asked here
            entry["linear_probe"] = {
                f"{share:.0%}": [probe(features, cells.labels, split.pool, split.test, share, seed) for seed in range(3)]
                for share in (0.01, 0.05)
            }
        pool_features = features[split.pool]
        clusters = KMeans(len(cells.class_names), n_init=10, random_state=0).fit_predict(
            StandardScaler().fit_transform(pool_features) if features.shape[1] <= 1024 else pool_features
        )
        entry["kmeans_pool"] = clustering_scores(cells.labels[split.pool], clusters)
        entry["seconds"] = time.perf_counter() - started
        results["representations"][name] = entry
        print(
            name,
            json.dumps({k: v for k, v in entry.items() if k != "linear_probe"}),
            {share: [round(r["aca"], 3) for r in runs] for share, runs in entry.get("linear_probe", {}).items()},
            flush=True,
        )
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
