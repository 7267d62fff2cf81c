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
