"""Annotators do not wait for a round: each round queues reserve cells (the next-ranked after
its step), served while the next round is computed, and the time the queue stood empty is
recorded per round. Rounds are computed in-process (worker.round_job.run_round, the worker's own
code), and the API sends them to a queue no worker reads, so the test decides when a round ends."""

import math
import uuid

import pytest
from sqlalchemy import select

from tests.conftest import balanced_sample, make_user, mislabeled_selections, started_project

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


@pytest.fixture
def unconsumed_queue(service_env, monkeypatch):
    """Rounds the API dispatches wait in a queue of their own (the session's worker ignores it)."""
    import redis

    from backend.core.settings import get_settings

    queue = f"xal-test-unconsumed-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("XAL_QUEUE", queue)
    get_settings.cache_clear()
    yield queue
    monkeypatch.undo()
    get_settings.cache_clear()
    redis.Redis.from_url(service_env["XAL_BROKER_URL"]).delete(queue, f"_kombu.binding.{queue}")


def _started_project(client, headers, i3a_dir, i3a_rows, budget: int, per_class: int) -> int:
    return started_project(
        client,
        headers,
        i3a_dir,
        balanced_sample(i3a_rows, per_class=per_class, offset=300),
        {
            "classes": [{"name": c} for c in CLASSES],
            "budget": budget,
            "initial_size": 6,
            "step_size": 6,
            "model_settings": {"max_epochs": 1, "batch_size": 16},
        },
    )


def _compute_round(project_id: int, number: int) -> None:
    from backend.core.db.models import Round
    from backend.core.db.session import new_session
    from worker.round_job import run_round

    with new_session() as session:
        round_id = session.scalar(select(Round.id).where(Round.project_id == project_id, Round.number == number))
    assert run_round(round_id) == "done"


def _next(client, project_id, headers) -> dict:
    response = client.post(f"/api/projects/{project_id}/queue/next", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _label(client, project_id, headers, image_id: int) -> dict:
    response = client.post(
        f"/api/projects/{project_id}/labels", headers=headers, json={"image_id": image_id, "class_name": "Golgi"}
    )
    assert response.status_code == 201, response.text
    return response.json()


def _round(client, project_id, headers, number: int) -> dict:
    response = client.get(f"/api/projects/{project_id}/rounds/{number}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_reserve_is_served_while_the_next_round_is_computed(
    app_client, admin_headers, i3a_dir, i3a_rows, unconsumed_queue
):
    # pool 36, budget 24, k = m = 6: round 0 queues 6 step cells and 3 reserve cells
    project_id = _started_project(app_client, admin_headers, i3a_dir, i3a_rows, budget=24, per_class=6)
    _, ann = make_user("annotator", project_ids=[project_id])
    _, other = make_user("annotator", project_ids=[project_id])
    assert len(app_client.get(f"/api/projects/{project_id}/rounds/0/selections", headers=admin_headers).json()) == 9

    step = []
    for _ in range(6):  # the step first, and only the step
        cell = _next(app_client, project_id, ann)["cell"]
        assert cell["rank"] < 6 and not cell["reserve"]
        step.append(_label(app_client, project_id, ann, cell["image_id"]))
    assert _round(app_client, project_id, admin_headers, 1)["state"] == "queued"

    # round 1 is computing: the queue serves round 0's reserve
    served = _next(app_client, project_id, ann)["cell"]
    assert served["reserve"] and served["round"] == 0 and served["rank"] >= 6
    queue = app_client.get(f"/api/projects/{project_id}/queue", headers=ann).json()
    assert [entry["rank"] for entry in queue] == [6, 7, 8] and all(entry["reserve"] for entry in queue)
    assert _label(app_client, project_id, ann, served["image_id"])["round"] == 0
    held = _next(app_client, project_id, other)["cell"]  # leased, not labeled before round 1 ends
    last = _next(app_client, project_id, ann)["cell"]
    assert held["reserve"] and last["reserve"] and len({served["image_id"], held["image_id"], last["image_id"]}) == 3
    _label(app_client, project_id, ann, last["image_id"])

    empty = _next(app_client, project_id, ann)
    assert empty["cell"] is None and empty["round_state"] == "queued"
    assert _round(app_client, project_id, admin_headers, 1)["queue_empty_s"] is not None

    _compute_round(project_id, 1)
    round_1 = _round(app_client, project_id, admin_headers, 1)
    assert round_1["n_labels"] == 8 and round_1["n_selected"] == 6 and round_1["queue_empty_s"] >= 0
    labeled = {label["image_id"] for label in step} | {served["image_id"], last["image_id"]}
    picked = app_client.get(f"/api/projects/{project_id}/rounds/1/selections", headers=admin_headers).json()
    # round 1 picked neither a cell labeled meanwhile nor the reserve cell still leased
    assert not (labeled | {held["image_id"]}) & {selection["image_id"] for selection in picked}

    # the cell leased from the reserve still takes its label after the queue moved on
    assert _label(app_client, project_id, other, held["image_id"])["round"] == 0
    fresh = _next(app_client, project_id, other)["cell"]
    assert fresh["round"] == 1 and fresh["rank"] == 0 and not fresh["reserve"]
    progress = app_client.get(f"/api/projects/{project_id}/progress", headers=admin_headers).json()
    assert progress["labeled"] == 9 and progress["rounds"][1]["queue_empty_s"] >= 0
    assert mislabeled_selections(project_id) == []


def test_a_cell_labeled_while_the_round_was_computed_is_not_queued_again(
    app_client, admin_headers, i3a_dir, i3a_rows, unconsumed_queue, monkeypatch
):
    """The round reads the unlabeled pool when it starts; a reserve cell labeled after that can
    be among the cells it picks. Storing the round marks that selection labeled, so the cell is
    not served a second time and the round's step still completes."""
    import worker.round_job

    project_id = _started_project(app_client, admin_headers, i3a_dir, i3a_rows, budget=24, per_class=6)
    _, ann = make_user("annotator", project_ids=[project_id])
    for _ in range(6):
        _label(app_client, project_id, ann, _next(app_client, project_id, ann)["cell"]["image_id"])
    reserve_cell = app_client.get(f"/api/projects/{project_id}/queue", headers=admin_headers).json()[0]["image_id"]
    gather = worker.round_job.gather_round

    def gather_then_label_a_reserve_cell(session, round_):
        inputs = gather(session, round_)
        _label(app_client, project_id, ann, reserve_cell)
        # a pool of exactly what the round queues (6 + 3 reserve), the cell labeled meanwhile in it
        others = [i for i, image_id in enumerate(inputs.pool_ids) if image_id != reserve_cell][:8]
        keep = [inputs.pool_ids.index(reserve_cell), *others]
        inputs.pool_ids = [inputs.pool_ids[i] for i in keep]
        inputs.pool_hashes = [inputs.pool_hashes[i] for i in keep]
        return inputs

    monkeypatch.setattr(worker.round_job, "gather_round", gather_then_label_a_reserve_cell)
    _compute_round(project_id, 1)
    picked = app_client.get(f"/api/projects/{project_id}/rounds/1/selections", headers=admin_headers).json()
    assert reserve_cell in {selection["image_id"] for selection in picked}
    assert mislabeled_selections(project_id) == []

    served = []
    while (cell := _next(app_client, project_id, ann)["cell"]) is not None:
        served.append(cell["image_id"])
        _label(app_client, project_id, ann, cell["image_id"])
    assert reserve_cell not in served and len(served) == len(set(served))
    assert _round(app_client, project_id, admin_headers, 2)["state"] == "queued"  # round 1's step completed
    assert mislabeled_selections(project_id) == []


def test_no_reserve_in_the_last_step_of_the_budget(app_client, admin_headers, i3a_dir, i3a_rows, unconsumed_queue):
    # budget 12 = k + m: reserve labels would push the budget's last step past it, so none is picked
    project_id = _started_project(app_client, admin_headers, i3a_dir, i3a_rows, budget=12, per_class=4)
    assert len(app_client.get(f"/api/projects/{project_id}/rounds/0/selections", headers=admin_headers).json()) == 6

    # a reserve picked before the budget was lowered to k + m is not served either
    project_id = _started_project(app_client, admin_headers, i3a_dir, i3a_rows, budget=24, per_class=4)
    lowered = app_client.patch(f"/api/projects/{project_id}", headers=admin_headers, json={"budget": 12})
    assert lowered.status_code == 200, lowered.text
    _, ann = make_user("annotator", project_ids=[project_id])
    for _ in range(6):
        _label(app_client, project_id, ann, _next(app_client, project_id, ann)["cell"]["image_id"])
    assert _next(app_client, project_id, ann)["cell"] is None
    reserve = app_client.get(f"/api/projects/{project_id}/rounds/0/selections", headers=admin_headers).json()[6:]
    assert len(reserve) == 3
    refused = app_client.post(
        f"/api/projects/{project_id}/labels", headers=ann, json={"image_id": reserve[0]["image_id"], "class_name": "Golgi"}
    )
    assert refused.status_code == 409 and "not in the labeling queue" in refused.json()["detail"]


def test_the_reserve_grows_to_cover_the_next_rounds_wait_at_the_annotators_pace(
    app_client, admin_headers, i3a_dir, i3a_rows, unconsumed_queue
):
    """A round that has kept annotators waiting long, at a fast pace: its reserve is sized from
    that pace and wait (scaled by the labels the next round trains on), not from the fixed share,
    and the round says what it was sized from."""
    from datetime import timedelta

    from backend.core.db.models import Label, Round
    from backend.core.db.session import new_session
    from worker.rounds import RESERVE_SAFETY

    project_id = _started_project(app_client, admin_headers, i3a_dir, i3a_rows, budget=60, per_class=10)
    _, ann = make_user("annotator", project_ids=[project_id])
    assert "reserve" in _round(app_client, project_id, admin_headers, 0)["selection_summary"]
    assert _round(app_client, project_id, admin_headers, 0)["selection_summary"]["reserve"]["size"] == 3  # no pace yet
    for _ in range(6):
        _label(app_client, project_id, ann, _next(app_client, project_id, ann)["cell"]["image_id"])
    with new_session() as session:  # round 1 was opened 8 s ago; they label one cell every 2 s
        round_1 = session.scalar(select(Round).where(Round.project_id == project_id, Round.number == 1))
        round_1.created_at -= timedelta(seconds=8)
        labels = session.scalars(select(Label).where(Label.project_id == project_id).order_by(Label.id)).all()
        for age, label in enumerate(reversed(labels)):
            label.created_at = round_1.created_at - timedelta(seconds=2 * age)
        session.commit()
    _compute_round(project_id, 1)

    reserve = _round(app_client, project_id, admin_headers, 1)["selection_summary"]["reserve"]
    assert reserve["pace_labels_per_s"] == pytest.approx(0.5)
    assert reserve["expected_wait_s"] >= 8 * (6 + 6) / 6  # its wait so far, times the next round's labels / its own
    # and the cells labeled during those 8 s or more, which the round may have picked
    assert reserve["size"] >= math.ceil(RESERVE_SAFETY * 0.5 * reserve["expected_wait_s"]) + 4 > 3
    picked = app_client.get(f"/api/projects/{project_id}/rounds/1/selections", headers=admin_headers).json()
    assert len(picked) == 6 + reserve["size"]
