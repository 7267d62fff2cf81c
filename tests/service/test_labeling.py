"""Leases, labels, undo, relabel and export against real PostgreSQL. Round 0 (random
picks, no training) is computed in-process so these tests need no worker."""

import csv
import io
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from tests.conftest import make_user


def _next(client, project_id, headers):
    response = client.post(f"/api/projects/{project_id}/queue/next", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["cell"]


def _label(client, project_id, headers, image_id, class_name="Golgi", **options):
    return client.post(
        f"/api/projects/{project_id}/labels",
        headers=headers,
        json={"image_id": image_id, "class_name": class_name, **options},
    )


def _leased_to(project_id, username):
    """The image ids of the project's selections leased to `username`."""
    from backend.core.db.models import Round, Selection, User
    from backend.core.db.session import new_session

    with new_session() as session:
        return set(
            session.scalars(
                select(Selection.image_id)
                .join(Round, Round.id == Selection.round_id)
                .join(User, User.id == Selection.leased_by_id)
                .where(Round.project_id == project_id, User.username == username)
            )
        )


def _label_rows(project_id):
    from backend.core.db.models import Label
    from backend.core.db.session import new_session

    with new_session() as session:
        return session.scalar(select(func.count(Label.id)).where(Label.project_id == project_id))


def test_an_annotator_gets_the_same_leased_cell_until_they_label_it(app_client, open_project):
    _, annotator = make_user("annotator", project_ids=[open_project])
    first = _next(app_client, open_project, annotator)
    assert first["rank"] == 0 and first["image_url"].endswith(f"/images/{first['image_id']}/file")
    assert _next(app_client, open_project, annotator)["image_id"] == first["image_id"]
    assert _label(app_client, open_project, annotator, first["image_id"]).status_code == 201
    assert _next(app_client, open_project, annotator)["rank"] == 1


def test_a_label_can_lease_the_next_cell_in_the_same_request(app_client, open_project):
    name, annotator = make_user("annotator", project_ids=[open_project])
    first = _next(app_client, open_project, annotator)
    answer = _label(app_client, open_project, annotator, first["image_id"], lease_next=True)
    assert answer.status_code == 201, answer.text
    label, leased = answer.json(), answer.json()["next"]
    assert label["image_id"] == first["image_id"] and label["class_name"] == "Golgi"
    assert leased["message"] == "leased" and leased["round_state"] == "done"
    assert leased["cell"]["rank"] == 1 and leased["cell"]["image_url"].endswith(f"/images/{leased['cell']['image_id']}/file")
    assert _leased_to(open_project, name) == {leased["cell"]["image_id"]}  # the labeled cell's lease ended
    again = _next(app_client, open_project, annotator)  # the same cell, its lease renewed
    assert again.pop("lease_expires_at") >= leased["cell"].pop("lease_expires_at") and again == leased["cell"]
    plain = _label(app_client, open_project, annotator, leased["cell"]["image_id"])
    assert plain.status_code == 201 and plain.json()["next"] is None and _leased_to(open_project, name) == set()


def test_a_refused_label_leases_nothing(app_client, open_project):
    _, alice = make_user("annotator", project_ids=[open_project])
    bob_name, bob = make_user("annotator", project_ids=[open_project])
    cell = _next(app_client, open_project, alice)
    before = _label_rows(open_project)
    assert _label(app_client, open_project, bob, cell["image_id"], lease_next=True).status_code == 409
    assert _label(app_client, open_project, bob, 10**9, lease_next=True).status_code == 404
    assert _label(app_client, open_project, bob, cell["image_id"], "Mitotic", lease_next=True).status_code == 422
    assert _leased_to(open_project, bob_name) == set() and _label_rows(open_project) == before


def test_a_cell_leased_to_someone_else_cannot_be_labeled_and_nothing_changes(app_client, open_project):
    _, alice = make_user("annotator", project_ids=[open_project])
    _, bob = make_user("annotator", project_ids=[open_project])
    cell = _next(app_client, open_project, alice)
    before = _label_rows(open_project)
    response = _label(app_client, open_project, bob, cell["image_id"])
    assert response.status_code == 409 and "leased to another annotator" in response.json()["detail"]
    assert _label_rows(open_project) == before


def test_bad_labels_get_clear_errors_and_store_nothing(app_client, open_project, admin_headers):
    _, annotator = make_user("annotator", project_ids=[open_project])
    cell = _next(app_client, open_project, annotator)
    before = _label_rows(open_project)
    unknown_class = _label(app_client, open_project, annotator, cell["image_id"], "Mitotic")
    assert unknown_class.status_code == 422 and "no class 'Mitotic'" in unknown_class.json()["detail"]
    queued = {s["image_id"] for s in app_client.get(f"/api/projects/{open_project}/queue", headers=annotator).json()}
    images = app_client.get(f"/api/projects/{open_project}/images?limit=100", headers=admin_headers).json()["items"]
    not_queued = next(i["id"] for i in images if i["id"] not in queued)
    response = _label(app_client, open_project, annotator, not_queued)
    assert response.status_code == 409 and "not in the labeling queue" in response.json()["detail"]
    assert _label(app_client, open_project, annotator, 10**9).status_code == 404
    malformed = app_client.post(f"/api/projects/{open_project}/labels", headers=annotator, json={"image_id": "x"})
    assert malformed.status_code == 422
    assert _label_rows(open_project) == before


def test_undo_returns_the_cell_to_its_annotator_and_keeps_the_history(app_client, open_project, admin_headers):
    _, annotator = make_user("annotator", project_ids=[open_project])
    cell = _next(app_client, open_project, annotator)
    assert _label(app_client, open_project, annotator, cell["image_id"], "Speckled").status_code == 201
    undone = app_client.post(f"/api/projects/{open_project}/labels/undo", headers=annotator)
    assert undone.status_code == 200 and undone.json()["retracted_at"] is not None
    assert _next(app_client, open_project, annotator)["image_id"] == cell["image_id"]
    assert _label(app_client, open_project, annotator, cell["image_id"], "Centromere").status_code == 201
    relabel = _label(app_client, open_project, annotator, cell["image_id"], "Nucleolar")
    assert relabel.status_code == 201

    export = app_client.get(f"/api/projects/{open_project}/labels/export?history=true&format=json", headers=admin_headers)
    history = [row for row in export.json() if row["image_id"] == cell["image_id"]]
    assert [row["class_name"] for row in history] == ["Speckled", "Centromere", "Nucleolar"]
    assert history[0]["retracted_at"] and history[1]["superseded_at"] and not history[2]["superseded_at"]
    current = list(
        csv.DictReader(
            io.StringIO(app_client.get(f"/api/projects/{open_project}/labels/export", headers=admin_headers).text)
        )
    )
    assert [row["class_name"] for row in current if row["image_id"] == str(cell["image_id"])] == ["Nucleolar"]

    _, other = make_user("annotator", project_ids=[open_project])
    response = _label(app_client, open_project, other, cell["image_id"], "Golgi")
    assert response.status_code == 409 and "another annotator" in response.json()["detail"]


def test_the_last_label_of_a_step_opens_the_next_round_once(app_client, open_project, admin_headers):
    annotators = [make_user("annotator", project_ids=[open_project])[1] for _ in range(6)]
    cells = [_next(app_client, open_project, headers) for headers in annotators]
    with ThreadPoolExecutor(6) as pool:  # half of them ask for their next cell with the label
        answers = list(
            pool.map(
                lambda job: _label(app_client, open_project, job[1], job[2]["image_id"], lease_next=job[0] % 2 == 0),
                zip(range(6), annotators, cells),
            )
        )
    assert [a.status_code for a in answers] == [201] * 6
    for leased in (a.json()["next"] for a in answers[::2]):  # the step is all leased: no next cell
        assert leased["cell"] is None and leased["message"] in (
            "every queued cell is leased or labeled",
            "round 1 is being computed; the next cells arrive when it is done",
        )
    rounds = app_client.get(f"/api/projects/{open_project}/rounds", headers=admin_headers).json()
    assert [r["number"] for r in rounds] == [0, 1]
    waiting = app_client.post(f"/api/projects/{open_project}/queue/next", headers=annotators[0]).json()
    assert waiting["cell"] is None and "round 1" in waiting["message"]
    progress = app_client.get(f"/api/projects/{open_project}/progress", headers=admin_headers).json()
    assert progress["labeled"] == 6 and progress["budget"] == 12 and progress["budget_used"] == 0.5


def test_a_skipped_cell_goes_back_to_the_queue_and_its_annotator_gets_others_first(app_client, open_project, db):
    from backend.core.db.models import CellNote

    _, annotator = make_user("annotator", project_ids=[open_project])
    first = _next(app_client, open_project, annotator)
    response = app_client.post(
        f"/api/projects/{open_project}/queue/skip",
        headers=annotator,
        json={"image_id": first["image_id"], "reason": "unsure", "note": "between speckled and homogeneous"},
    )
    assert response.status_code == 200
    assert _next(app_client, open_project, annotator)["image_id"] != first["image_id"]
    _, colleague = make_user("annotator", project_ids=[open_project])
    assert _next(app_client, open_project, colleague)["image_id"] == first["image_id"]  # back in the queue
    note = db.scalar(select(CellNote).where(CellNote.image_id == first["image_id"]))
    assert note.kind == "unsure" and note.note == "between speckled and homogeneous"
    bad = app_client.post(
        f"/api/projects/{open_project}/queue/skip",
        headers=annotator,
        json={"image_id": first["image_id"], "reason": "bored"},
    )
    assert bad.status_code == 422


def test_label_first_then_reveal_keeps_both_answers(app_client, open_project, admin_headers):
    assert (
        app_client.patch(
            f"/api/projects/{open_project}", headers=admin_headers, json={"reveal_after_label": True}
        ).status_code
        == 200
    )
    _, annotator = make_user("annotator", project_ids=[open_project])
    cell = app_client.post(f"/api/projects/{open_project}/queue/next", headers=annotator).json()["cell"]
    assert cell["hints_hidden"] and cell["details"] == {}
    queue = app_client.get(f"/api/projects/{open_project}/queue", headers=annotator).json()
    assert all(entry["details"] == {} for entry in queue)
    blind = _label(app_client, open_project, annotator, cell["image_id"], "Speckled").json()
    assert blind["hints_seen"] is False and blind["hints"]["strategy"] == "random"
    revised = app_client.post(
        f"/api/projects/{open_project}/labels",
        headers=annotator,
        json={"image_id": cell["image_id"], "class_name": "Homogeneous", "after_reveal": True},
    )
    assert revised.status_code == 201 and revised.json()["hints_seen"] is True
    again = app_client.post(
        f"/api/projects/{open_project}/labels",
        headers=annotator,
        json={"image_id": cell["image_id"], "class_name": "Golgi", "after_reveal": True},
    )
    assert again.status_code == 409
    stats = app_client.get(f"/api/projects/{open_project}/stats", headers=admin_headers).json()
    assert stats["reveal"] == {"n": 1, "changed": 1}


def test_stats_show_throughput_and_agreement(app_client, open_project, admin_headers):
    _, alice = make_user("annotator", "alice-" + uuid.uuid4().hex[:4], project_ids=[open_project])
    cell = _next(app_client, open_project, alice)
    assert _label(app_client, open_project, alice, cell["image_id"], "Speckled").status_code == 201
    admin_relabel = _label(app_client, open_project, admin_headers, cell["image_id"], "Speckled")
    assert admin_relabel.status_code == 201
    stats = app_client.get(f"/api/projects/{open_project}/stats", headers=admin_headers).json()
    mine = next(a for a in stats["annotators"] if a["username"].startswith("alice-"))
    assert mine["labels"] == 1 and mine["median_seconds"] is not None and mine["labels_per_hour"] > 0
    assert stats["agreement"]["cells_labeled_twice"] == 1 and stats["agreement"]["percent_agreement"] == 100.0
    _, annotator = make_user("annotator", project_ids=[open_project])
    assert app_client.get(f"/api/projects/{open_project}/stats", headers=annotator).status_code == 403


def test_an_admin_can_cancel_and_retry_a_round(app_client, open_project, admin_headers):
    annotators = [make_user("annotator", project_ids=[open_project])[1] for _ in range(6)]
    for headers in annotators:
        cell = _next(app_client, open_project, headers)
        assert _label(app_client, open_project, headers, cell["image_id"]).status_code == 201
    cancelled = app_client.post(f"/api/projects/{open_project}/rounds/cancel", headers=admin_headers)
    if cancelled.status_code == 409:  # a worker of this test session finished round 1 first
        assert app_client.get(f"/api/projects/{open_project}/rounds/1", headers=admin_headers).json()["state"] == "done"
        return
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert app_client.post(f"/api/projects/{open_project}/rounds/cancel", headers=admin_headers).status_code == 409
    assert app_client.post(f"/api/projects/{open_project}/rounds/cancel", headers=annotators[0]).status_code == 403
    retried = app_client.post(f"/api/projects/{open_project}/rounds/retry", headers=admin_headers)
    assert retried.status_code == 202 and retried.json()["state"] == "queued" and retried.json()["number"] == 1


def test_relevance_maps_list_is_empty_before_a_model_exists(app_client, open_project, admin_headers):
    _, annotator = make_user("annotator", project_ids=[open_project])
    cell = _next(app_client, open_project, annotator)
    maps = app_client.get(f"/api/projects/{open_project}/images/{cell['image_id']}/maps", headers=annotator)
    assert maps.status_code == 200 and maps.json() == []
    assert (
        app_client.get(f"/api/projects/{open_project}/images/{cell['image_id']}/maps/1.png", headers=annotator).status_code
        == 404
    )
