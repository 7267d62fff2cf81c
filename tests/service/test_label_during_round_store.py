"""The one interleaving the one-statement label has to run twice for: a reserve cell is labeled
while the round that picked it again is being stored. The label's statement starts before the
store commits and waits for the selection row the store rewrites (mark_labeled_cells); it must
then see the new round, mark the cell labeled there and count it off that round's step, or
the step would never close."""

import threading
import time

from sqlalchemy import select, text

from tests.conftest import balanced_sample, make_user, mislabeled_selections, started_project
from tests.service.chunk_workers import private_queue  # noqa: F401  (fixture: no worker takes round 1)

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


def test_a_reserve_label_that_waited_for_a_round_being_stored_counts_in_that_rounds_step(
    app_client,
    admin_headers,
    i3a_dir,
    i3a_rows,
    private_queue,  # noqa: F811
):
    from backend.core.db.models import Round, Selection
    from backend.core.db.session import new_session
    from backend.core.jobs import JobState
    from backend.core.queries import mark_labeled_cells

    client = app_client
    project = started_project(
        client,
        admin_headers,
        i3a_dir,
        balanced_sample(i3a_rows, per_class=4, offset=500),
        {"classes": [{"name": c} for c in CLASSES], "budget": 24, "initial_size": 6, "step_size": 6},
    )
    _, annotator = make_user("annotator", project_ids=[project])

    def label(cell: dict):
        return client.post(
            f"/api/projects/{project}/labels", headers=annotator, json={"image_id": cell["image_id"], "class_name": "Golgi"}
        )

    for _ in range(6):  # round 0's step: round 1 is queued, the queue serves round 0's reserve
        assert label(client.post(f"/api/projects/{project}/queue/next", headers=annotator).json()["cell"]).status_code == 201
    reserve_cell = client.post(f"/api/projects/{project}/queue/next", headers=annotator).json()["cell"]
    assert reserve_cell["reserve"] and reserve_cell["round"] == 0

    # round 1 being stored (as worker.rounds.store_round does): it picked the leased reserve cell
    # again, and one other cell; its transaction stays open while the label is sent
    with new_session() as store:
        round_1 = store.scalar(select(Round).where(Round.project_id == project, Round.number == 1))
        other = store.scalar(
            select(Selection.image_id)
            .where(
                Selection.round_id != round_1.id,
                Selection.labeled.is_(False),
                Selection.image_id != reserve_cell["image_id"],
            )
            .join(Round, Round.id == Selection.round_id)
            .where(Round.project_id == project)
            .limit(1)
        )
        store.add_all(
            [
                Selection(round_id=round_1.id, image_id=reserve_cell["image_id"], rank=0, score=1.0, details={}),
                Selection(round_id=round_1.id, image_id=other, rank=1, score=0.5, details={}),
            ]
        )
        store.flush()
        mark_labeled_cells(store, round_1)  # rewrites the reserve cell's row of round 0: held until commit

        answer = {}
        sender = threading.Thread(target=lambda: answer.setdefault("label", label(reserve_cell)))
        sender.start()
        deadline = time.monotonic() + 30
        with new_session() as watcher:  # until the label's statement waits for the store's row lock
            while time.monotonic() < deadline and not watcher.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO labels%'"
                )
            ):
                time.sleep(0.05)
                watcher.rollback()
        assert sender.is_alive(), "the label did not wait for the round being stored"
        round_1.n_selected = 2
        round_1.open_cells = 2
        round_1.state = JobState.DONE
        store.commit()
    sender.join(timeout=30)

    assert answer["label"].status_code == 201, answer["label"].text
    with new_session() as session:
        assert session.scalar(select(Round.open_cells).where(Round.project_id == project, Round.number == 1)) == 1
    assert mislabeled_selections(project) == []
    # the step's other cell is its last: labeling it opens round 2
    assert label({"image_id": other}).status_code == 201
    rounds = client.get(f"/api/projects/{project}/rounds", headers=admin_headers).json()
    assert [r["number"] for r in rounds] == [0, 1, 2]
