"""The simulator replays the product: a project run through the API (real PostgreSQL, real I3A
cells, the ground truth as its annotator) and `xal simulate`'s run of the same cells, strategy,
seed and settings queue the same cells round after round and train the same models.

The pool holds 126 cells, so B = 25 and m = 2.5 rounded: the budget where the product (which
rounded halves to even, m = 2) and the simulator (halves up, m = 3) once parted."""

import numpy as np
import pytest
from sqlalchemy import select

from backend.testing import wait_for_round
from tests.conftest import balanced_sample
from tests.service.chunk_workers import private_queue  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

SEED = 3
TRAINING = {"max_epochs": 2, "patience": 2, "batch_size": 32, "seed": SEED}


def test_a_simulation_of_a_project_queues_the_cells_the_project_queued(
    app_client,
    admin_headers,
    i3a_dir,
    i3a_rows,
    private_queue,  # noqa: F811
):
    from backend.core.blobs import get_blob_store
    from backend.core.db.models import Image, Round
    from backend.core.db.session import new_session
    from backend.core.readers import IncomingFile
    from backend.services.imports import import_images
    from backend.services.projects import find_project
    from worker.experiments.cells import LabeledCells, Split
    from worker.experiments.per_budget import SimulationSettings, run_case
    from worker.round_job import run_round

    client, headers = app_client, admin_headers
    pool_rows = balanced_sample(i3a_rows, per_class=21)
    test_rows = balanced_sample(i3a_rows, per_class=2, offset=21)
    class_names = sorted({row["pattern"] for row in pool_rows})  # the simulator's class order
    response = client.post(
        "/api/projects",
        headers=headers,
        json={
            "name": "replayed",
            "classes": [{"name": name} for name in class_names],
            "strategy": "entropy",
            "model_settings": {**TRAINING, "pool_pretraining_epochs": 0},
        },
    )
    assert response.status_code == 201, response.text
    project_id = response.json()["id"]
    with new_session() as session:
        project = find_project(session, project_id)
        import_images(
            session,
            project,
            [IncomingFile(f"{r['image_id']}.png", (i3a_dir / r["image_path"]).read_bytes()) for r in pool_rows],
        )
        test_files = [
            IncomingFile(f"test-{r['image_id']}.png", (i3a_dir / r["image_path"]).read_bytes(), reference_class=r["pattern"])
            for r in test_rows
        ]
        import_images(session, project, test_files, "test")
        session.commit()
    truth = {f"{r['image_id']}.png": r["pattern"] for r in pool_rows}

    def round_id(number: int) -> int | None:
        with new_session() as session:
            return session.scalar(select(Round.id).where(Round.project_id == project_id, Round.number == number))

    # The product: rounds computed in this process (no worker serves this test's queue), so both
    # runs share one process's arithmetic; the annotator labels what the queue serves.
    assert client.post(f"/api/projects/{project_id}/start", headers=headers).status_code == 202
    product_batches, product_aca = [], []
    for number in range(20):
        assert run_round(round_id(number)) == "done"
        round_ = wait_for_round(client, headers, project_id, number)
        if number > 0:
            product_aca.append(round_["metrics"]["aca"])
        selections = client.get(f"/api/projects/{project_id}/rounds/{number}/selections", headers=headers).json()
        batch = [s["image_id"] for s in sorted(selections, key=lambda s: s["rank"]) if not s["reserve"]]
        assert len(batch) == round_["n_selected"]
        if not batch:
            break
        product_batches.append(batch)
        for _ in batch:
            cell = client.post(f"/api/projects/{project_id}/queue/next", headers=headers).json()["cell"]
            label = client.post(
                f"/api/projects/{project_id}/labels",
                headers=headers,
                json={"image_id": cell["image_id"], "class_name": truth[cell["filename"]]},
            )
            assert label.status_code == 201, label.text
    assert [len(b) for b in product_batches] == [6, 3, 3, 3, 3, 3, 3, 1]

    # The simulation of the same cells: pool in image-id order, the project's test split.
    with new_session() as session:
        images = session.execute(
            select(Image.id, Image.content_hash, Image.filename, Image.split)
            .where(Image.project_id == project_id)
            .order_by(Image.id)
        ).all()
    pool = [image for image in images if image.split == "pool"]
    test = [image for image in images if image.split == "test"]
    classes = {**truth, **{f"test-{r['image_id']}.png": r["pattern"] for r in test_rows}}
    cells = LabeledCells(
        [image.content_hash for image in pool + test],
        np.array([class_names.index(classes[image.filename]) for image in pool + test], dtype=np.int64),
        class_names,
    )
    split = Split(
        pool=np.arange(len(pool)),
        test=np.arange(len(pool), len(pool) + len(test)),
        pretrain=np.zeros(0, dtype=np.int64),
    )
    settings = SimulationSettings(
        data="(the project's cells)", max_epochs=TRAINING["max_epochs"], patience=TRAINING["patience"], batch_size=32
    )
    record = run_case(cells, split, "cal", SEED, 20.0, settings, get_blob_store(), None)

    assert record["plan"] == [6, 3, 3, 3, 3, 3, 3, 1, 0]
    assert [[pool[i].id for i in batch] for batch in record["batches"] if batch] == product_batches
    assert [step["aca"] for step in record["steps"]] == product_aca
