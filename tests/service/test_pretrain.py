"""`xal pretrain`: a start model trained on a labeled folder, stored as a model version that a
project can start from (new head for its own classes, early layers frozen)."""

import csv
import shutil

import numpy as np
import pytest

from tests.conftest import balanced_sample

pytestmark = pytest.mark.slow

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


@pytest.fixture(scope="module")
def labeled_folder(tmp_path_factory, i3a_dir, i3a_rows):
    folder = tmp_path_factory.mktemp("pretrain-cells")
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "pattern"])
        for row in balanced_sample(i3a_rows, per_class=10, offset=300):
            (folder / row["pattern"]).mkdir(exist_ok=True)
            shutil.copy(i3a_dir / row["image_path"], folder / row["image_path"])
            writer.writerow([row["image_path"], row["pattern"]])
    return folder


def test_pretrain_stores_a_model_version_a_project_can_start_from(
    service_env, labeled_folder, app_client, admin_headers, capsys
):
    from backend.cli import main
    from backend.core.blobs import get_blob_store
    from backend.core.db.models import ModelVersion
    from backend.core.db.session import new_session
    from worker.ml.training import load_checkpoint
    from worker.rounds import RoundInputs, compute_round

    main(
        [
            "pretrain",
            "--data",
            str(labeled_folder),
            "--name",
            "no-golgi",
            "--exclude-class",
            "Golgi",
            "--limit",
            "40",
            "--max-epochs",
            "2",
            "--seed",
            "1",
        ]
    )
    model_id = int(capsys.readouterr().out.strip().splitlines()[-1])

    with new_session() as session:
        model = session.get(ModelVersion, model_id)
        assert model.project_id is None and model.name == "no-golgi"
        assert model.class_names == sorted(set(CLASSES) - {"Golgi"})
        assert model.metrics["n"] == 8 and 0 <= model.metrics["aca"] <= 1  # 40 cells, a fifth held out
        assert model.training["n_labels"] == 32 and model.training["epochs_run"] >= 1
        checkpoint_key = model.checkpoint_key
    assert load_checkpoint(get_blob_store().get(checkpoint_key)).n_classes == 5

    response = app_client.post(
        "/api/projects",
        headers=admin_headers,
        json={"name": "from-no-golgi", "classes": [{"name": c} for c in CLASSES], "start_model_id": model_id},
    )
    assert response.status_code == 201, response.text
    assert response.json()["start_model_id"] == model_id
    missing = app_client.post(
        "/api/projects",
        headers=admin_headers,
        json={"name": "from-nothing", "classes": [{"name": c} for c in CLASSES], "start_model_id": model_id + 1000},
    )
    assert missing.status_code == 422

    # The project's first trained round transfers it: six outputs, early layers frozen.
    with open(labeled_folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::5]
    labeled_hashes = [get_blob_store().put((labeled_folder / row["image_path"]).read_bytes()) for row in rows]
    result = compute_round(
        RoundInputs(
            project_id=1,
            number=1,
            channel="luminance",
            class_names=CLASSES,
            strategy="entropy",
            strategy_options={},
            model_settings={"max_epochs": 1, "batch_size": 16},
            batch_size=0,
            parent_model_id=model_id,
            parent_checkpoint=checkpoint_key,
            transfer=True,
            labeled_ids=list(range(len(rows))),
            labeled_hashes=labeled_hashes,
            labeled_classes=np.array([CLASSES.index(row["pattern"]) for row in rows]),
            pool_ids=[],
            pool_hashes=[],
            test_hashes=[],
            test_classes=np.zeros(0, dtype=np.int64),
            render_maps=False,
        )
    )
    transferred = load_checkpoint(result.checkpoint)
    assert transferred.n_classes == 6 and transferred.early_layers_frozen
