"""Scoring clusters against known classes (thesis 4.1.1): clustering accuracy with
the best one-to-one cluster-to-class match (Hungarian), NMI and ARI; and the 2-D
PCA view of latent features the thesis plots (Fig. 25, 27, 29)."""

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def match_clusters_to_classes(y_true, y_pred) -> dict[int, int]:
    """cluster -> class, one to one, maximising the cells whose cluster maps to their class.
    With more clusters than classes the surplus clusters stay unmatched (absent)."""
    y_true, y_pred = _labels(y_true, y_pred)
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    rows, cols = linear_sum_assignment(contingency_matrix(y_true, y_pred), maximize=True)
    return {int(clusters[c]): int(classes[r]) for r, c in zip(rows, cols)}


def clustering_accuracy(y_true, y_pred) -> float:
    """ACC: the share of cells whose cluster, under the best one-to-one match, is their class."""
    y_true, y_pred = _labels(y_true, y_pred)
    if len(y_true) == 0:
        raise ValueError("no cells to score")
    mapping = match_clusters_to_classes(y_true, y_pred)
    matched = np.array([mapping.get(int(cluster), -1) for cluster in y_pred])
    return float(np.mean(matched == y_true))


def clustering_scores(y_true, y_pred) -> dict:
    """ACC (Hungarian), NMI and ARI, as floats."""
    y_true, y_pred = _labels(y_true, y_pred)
    return {
        "acc": clustering_accuracy(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }


def pca_2d(latent) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) features -> their (N, 2) coordinates on the first two principal axes
    (PC1, PC2) and the share of variance each explains."""
    pca = PCA(n_components=2, svd_solver="full").fit(np.asarray(latent, dtype=np.float64))
    return pca.transform(np.asarray(latent, dtype=np.float64)), pca.explained_variance_ratio_


def _labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and alike: {y_true.shape} vs {y_pred.shape}")
    return y_true, y_pred
