"""Per-round classification metrics: ACA, MCA and the confusion matrix."""

import numpy as np
from sklearn.metrics import confusion_matrix


def classification_metrics(y_true, y_pred, n_classes: int) -> dict:
    """ACA = overall accuracy; MCA = mean of the per-class accuracies (recalls)
    over the classes present in y_true. Confusion rows are true classes,
    columns predicted ones. Everything is JSON-serialisable; with no samples,
    aca and mca are None."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    if len(y_true):
        confusion = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    else:
        confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    support = confusion.sum(axis=1)
    per_class = [float(confusion[k, k] / support[k]) if support[k] else None for k in range(n_classes)]
    present = [accuracy for accuracy in per_class if accuracy is not None]
    return {
        "aca": float(np.trace(confusion) / len(y_true)) if len(y_true) else None,
        "mca": float(np.mean(present)) if present else None,
        "per_class_accuracy": per_class,
        "confusion": confusion.astype(int).tolist(),
        "n": int(len(y_true)),
    }


def selection_diagnostics(scores, predicted, labels, pool_expected_error: float | None = None) -> dict:
    """How well a labeled batch's selection found the model's mistakes.

    hit_rate: the share of the batch the model had misclassified (its prediction when the
    batch was picked vs. the label it then got), beside `pool_expected_error`, the error
    rate the model expected on the whole pool (mean of 1 - max softmax) — a strategy that
    finds mistakes has a hit rate well above it. error_auroc: how well the batch's scores
    rank its errors above its correct cells (None when the batch has only one kind)."""
    from sklearn.metrics import roc_auc_score

    errors = np.asarray(predicted) != np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    auroc = float(roc_auc_score(errors, scores)) if 0 < errors.sum() < len(errors) else None
    return {
        "n": int(len(errors)),
        "errors": int(errors.sum()),
        "hit_rate": float(errors.mean()) if len(errors) else None,
        "pool_expected_error": pool_expected_error,
        "error_auroc": auroc,
    }
