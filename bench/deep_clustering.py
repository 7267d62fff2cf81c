"""Deep embedded clustering on real I3A cells (thesis 4.1): cases 1, 2 and 3 of
worker/ml/deep_clustering.py, and k-means on raw pixels as the floor.

    .venv/bin/python bench/deep_clustering.py [--cells 800] [--pretrain-epochs 5] [--cluster-epochs 3]

No label is used for training or for drawing the cells (a seeded uniform sample of
labels.csv, so classes come in their natural shares); labels only score the clusters,
on the same cells the networks were trained on (clustering is transductive).
Every case trains a fresh network from the same seed on the same cells.

Sizing (defaults): 800 cells, 5 pretraining + 3 global-training epochs, batch 32,
Adam lr 1e-3, gamma 0.1, 18-degree rotations. Measured on the shared 2-core CPU of
the development machine (load 3-6 from other work; smoke run, 128 cells, 1 + 1
epochs), a training epoch took 51-71 ms per cell for case 1, 98-105 for case 2 and
184-215 for case 3 (its two extra streams run 32-channel volumes at 112x112), and
encoding all cells twice about 0.6 epoch more per case: 800 x 0.36 s x 8.6 = about
42 minutes for the three cases, less on a quiet machine; k-means on the pixels
takes well under a minute. The thesis trained 200 + 450 epochs on a GPU: these
numbers are a short-budget reading, not a reproduction of its 81/86/95% on I3A.

Writes, under --out-dir (bench/results):
- deep-clustering-i3a.csv: case,acc,nmi,ari,recon_mse,epochs,wall_s. Rows `caseK` are
  after global training; `caseK-pretrained` score k-means on the latent after the
  reconstruction-only pretraining (gamma = 0, the centroids' starting point; wall_s =
  pretraining time); `kmeans-raw-pixels` is k-means on the
  12544 pixels, whose recon_mse is that of replacing each cell by its cluster centre.
- deep-clustering-i3a-pca.png: PC1/PC2 of each latent (of the pixels for k-means),
  coloured by cluster and by true class.
- deep-clustering-i3a.json: the settings, the machine and every case's history."""

import argparse
import csv
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
I3A = Path(os.environ.get("XAL_I3A_DIR", ROOT.parent / "shared" / "data" / "i3a"))
COLUMNS = ("case", "acc", "nmi", "ari", "recon_mse", "epochs", "wall_s")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_sample(n_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from backend.core.images import load_cell

    with open(I3A / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({row["pattern"] for row in rows})
    chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(n_cells, len(rows)), replace=False))
    images = np.stack([load_cell((I3A / rows[i]["image_path"]).read_bytes()) for i in chosen])
    return images, np.array([classes.index(rows[i]["pattern"]) for i in chosen]), classes


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def plot_pca(path: Path, views: list[tuple[str, np.ndarray, np.ndarray]], labels: np.ndarray, classes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worker.ml.cluster_metrics import match_clusters_to_classes, pca_2d

    fig, axes = plt.subplots(len(views), 2, figsize=(10, 4.2 * len(views)), squeeze=False)
    colours = plt.get_cmap("tab10")  # class k in colour k; a cluster in the colour of the class it is matched to
    for row, (name, features, clusters) in zip(axes, views):
        points, explained = pca_2d(features)
        matched = match_clusters_to_classes(labels, clusters)
        groups = (
            [
                (
                    clusters == c,
                    f"cluster {c} -> {classes[matched[c]]}" if c in matched else f"cluster {c}",
                    colours(matched.get(c, len(classes) + c)),
                )
                for c in np.unique(clusters)
            ],
            [(labels == k, cls, colours(k)) for k, cls in enumerate(classes)],
        )
        for ax, group, title in zip(row, groups, ("by cluster (Hungarian match)", "by true class")):
            for mask, label, colour in group:
                if mask.any():
                    ax.scatter(points[mask, 0], points[mask, 1], s=4, alpha=0.6, color=colour, label=label)
            ax.set_title(f"{name}: {title}", fontsize=10)
            ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% of variance)")
            ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}%)")
            ax.legend(fontsize=7, markerscale=3, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=800)
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--cluster-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cases", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--standardise",
        action="store_true",
        help="each cell to zero mean, unit variance first (worker.ml.deep_clustering.standardise_cells)",
    )
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    import torch
    from sklearn.cluster import KMeans

    from worker.ml.cluster_metrics import clustering_scores
    from worker.ml.deep_clustering import (
        DeepClusteringAutoencoder,
        DeepClusteringConfig,
        standardise_cells,
        train_deep_clustering,
    )
    from worker.ml.training import resolve_device

    device = resolve_device(args.device)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    images, labels, classes = load_sample(args.cells, args.seed)
    if args.standardise:
        images = standardise_cells(images)
    n_clusters = len(classes)
    print(
        f"{len(images)} cells loaded in {time.perf_counter() - started:.1f} s; "
        f"classes {dict(zip(classes, np.bincount(labels, minlength=n_clusters).tolist()))}",
        flush=True,
    )

    rows, views, histories = [], [], {}
    started, cpu = time.perf_counter(), cpu_seconds()
    pixels = images.reshape(len(images), -1)
    kmeans = KMeans(n_clusters=n_clusters, n_init=10, random_state=args.seed).fit(pixels)
    rows.append(
        {
            "case": "kmeans-raw-pixels",
            **clustering_scores(labels, kmeans.labels_),
            "recon_mse": float(kmeans.inertia_ / pixels.size),
            "epochs": "",
            "wall_s": time.perf_counter() - started,
        }
    )
    views.append(("k-means on raw pixels", pixels, kmeans.labels_))
    print(f"{rows[-1]} cpu {cpu_seconds() - cpu:.0f} s", flush=True)
    write_csv(out / "deep-clustering-i3a.csv", rows)  # after every case: a late failure keeps the rest

    config = DeepClusteringConfig(
        pretrain_epochs=args.pretrain_epochs, cluster_epochs=args.cluster_epochs, batch_size=args.batch_size, seed=args.seed
    )
    for case in args.cases:
        torch.manual_seed(args.seed)
        model = DeepClusteringAutoencoder(case)
        cpu, case_started = cpu_seconds(), time.perf_counter()

        def progress(done: int, total: int, case=case, case_started=case_started) -> None:
            print(f"case {case}: epoch {done}/{total} done at {time.perf_counter() - case_started:.0f} s", flush=True)

        result = train_deep_clustering(model, images, n_clusters, config, device, progress)
        pretrain_s = sum(row["seconds"] for row in result.history if row["phase"] == "pretrain")
        rows.append(
            {
                "case": f"case{case}-pretrained",
                **clustering_scores(labels, result.initial_assignments),
                "recon_mse": result.pretrained_recon_mse,
                "epochs": args.pretrain_epochs,
                "wall_s": pretrain_s,
            }
        )
        rows.append(
            {
                "case": f"case{case}",
                **clustering_scores(labels, result.assignments),
                "recon_mse": result.recon_mse,
                "epochs": args.pretrain_epochs + args.cluster_epochs,
                "wall_s": result.seconds,
            }
        )
        views.append((f"case {case}", result.latent, result.assignments))
        histories[f"case{case}"] = result.history
        per_epoch = [row["seconds"] for row in result.history]
        print(
            f"{rows[-2]}\n{rows[-1]}\ncase {case}: {result.seconds:.0f} s wall, {cpu_seconds() - cpu:.0f} s cpu; "
            f"epochs {min(per_epoch):.1f}-{max(per_epoch):.1f} s = "
            f"{1000 * np.median(per_epoch) / len(images):.0f} ms/cell (median)",
            flush=True,
        )
        write_csv(out / "deep-clustering-i3a.csv", rows)

    plot_pca(out / "deep-clustering-i3a-pca.png", views, labels, classes)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}"
    )
    (out / "deep-clustering-i3a.json").write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "machine": machine,
                "cells": len(images),
                "config": config.__dict__,
                "rows": rows,
                "histories": histories,
            },
            indent=1,
        )
    )
    print(f"machine: {machine}\nwrote {out / 'deep-clustering-i3a.csv'}")


if __name__ == "__main__":
    main()
