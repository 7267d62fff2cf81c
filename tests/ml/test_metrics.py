import json

import pytest

from worker.ml.metrics import classification_metrics


def test_mca_weights_every_present_class_equally_unlike_aca():
    # Eight cells of class 0, all right; two of class 1, one right; no class 2.
    y_true = [0] * 8 + [1, 1]
    y_pred = [0] * 8 + [0, 1]
    metrics = classification_metrics(y_true, y_pred, n_classes=3)
    assert metrics["aca"] == pytest.approx(0.9)
    assert metrics["per_class_accuracy"] == [1.0, 0.5, None]
    assert metrics["mca"] == pytest.approx(0.75)
    assert metrics["confusion"] == [[8, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert metrics["n"] == 10
    json.dumps(metrics)


def test_predictions_of_an_absent_class_count_in_the_confusion_matrix():
    metrics = classification_metrics([0, 1], [2, 1], n_classes=3)
    assert metrics["confusion"] == [[0, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert metrics["per_class_accuracy"] == [0.0, 1.0, None]


def test_no_samples_gives_no_accuracy():
    metrics = classification_metrics([], [], n_classes=2)
    assert metrics["aca"] is None and metrics["mca"] is None and metrics["n"] == 0
    assert metrics["confusion"] == [[0, 0], [0, 0]]


def test_labels_outside_the_classes_are_rejected():
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics([0, 3], [0, 1], n_classes=3)


def test_selection_diagnostics_count_the_models_mistakes_in_a_batch():
    from worker.ml.metrics import selection_diagnostics

    diagnostics = selection_diagnostics(
        scores=[0.9, 0.8, 0.3, 0.1], predicted=[0, 1, 2, 2], labels=[1, 1, 2, 0], pool_expected_error=0.2
    )
    assert diagnostics["hit_rate"] == 0.5 and diagnostics["errors"] == 2 and diagnostics["pool_expected_error"] == 0.2
    assert diagnostics["error_auroc"] == 0.5  # errors at scores 0.9 and 0.1, correct at 0.8 and 0.3
    perfect = selection_diagnostics([0.9, 0.8, 0.3], [0, 0, 1], [1, 1, 1])
    assert perfect["error_auroc"] == 1.0
    assert selection_diagnostics([0.5, 0.4], [1, 1], [1, 1])["error_auroc"] is None
