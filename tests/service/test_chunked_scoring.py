"""A pool scored in chunks by two real Celery worker processes picks the same cells with the
same scores as one unchunked pass over the same round inputs and the same trained model."""

import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from backend.testing import wait_for_round
from tests.conftest import balanced_sample
from tests.service.chunk_workers import private_queue, two_chunking_workers  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

CHUNK_SIZE = 32  # 90 unlabeled cells -> 3 chunks (boundaries on multiples of the relevance batch, 32)


@pytest.fixture
def scoring_chunk_size():
    return CHUNK_SIZE


def test_chunks_on_two_workers_pick_what_one_pass_picks(app_client, admin_headers, two_chunking_workers, i3a_dir, i3a_rows):
    from backend.core.blobs import get_blob_store
    from backend.core.db.models import ModelVersion, Project, Round, Selection
    from backend.core.db.session import new_session
    from worker.ml.training import load_checkpoint
    from worker.rounds import RoundResult, gather_round, load_cells, score_in_process, select_batch

    client = app_client
    project = _project_with_a_labeled_first_batch(client, admin_headers, i3a_dir, i3a_rows, offset=200)
    chunked = wait_for_round(client, admin_headers, project["id"], 1, timeout=600)
    assert chunked["selection_summary"]["chunks"]["n"] == 3 and chunked["n_selected"] == 10

    # The reference: the same round inputs, the same trained model, the whole pool in one pass.
    with new_session() as session:
        round_ = session.scalar(select(Round).where(Round.project_id == project["id"], Round.number == 1))
        inputs = gather_round(session, round_)
        checkpoint = session.get(ModelVersion, round_.model_version_id).checkpoint_key
        stored = session.execute(
            select(Selection.image_id, Selection.score, Selection.details)
            .where(Selection.round_id == round_.id)
            .order_by(Selection.rank)
        ).all()
        round_id, attempt = round_.id, round_.attempts
        assert session.get(Project, project["id"]).state == "active"
    inputs.render_maps = False
    assert len(inputs.pool_ids) == 90
    model = load_checkpoint(get_blob_store().get(checkpoint))
    device = next(model.parameters()).device
    outputs = score_in_process(model, inputs, device)
    reference = RoundResult()
    select_batch(
        inputs,
        model,
        device,
        load_cells(inputs.labeled_hashes, inputs.channel),
        outputs,
        reference,
        lambda **progress: None,
        time.perf_counter(),
    )

    assert [image_id for image_id, _, _ in stored] == [image_id for image_id, _, _ in reference.selected]
    np.testing.assert_allclose(
        [score for _, score, _ in stored], [score for _, score, _ in reference.selected], rtol=1e-6, atol=1e-9
    )
    for (_, _, details), (_, _, expected) in zip(stored, reference.selected):
        np.testing.assert_allclose(details["distances"], expected["distances"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(details["probabilities"], expected["probabilities"], rtol=1e-6, atol=1e-9)
        assert details["predicted"] == expected["predicted"]
    assert chunked["selection_summary"]["pool_expected_error"] == pytest.approx(reference.summary["pool_expected_error"])

    # A chunk delivered again after the round was stored changes nothing.
    from worker.chunks import score_chunk

    assert score_chunk(round_id, attempt, 0) == "dropped"
    with new_session() as session:
        assert session.scalar(select(Round.n_selected).where(Round.id == round_id)) == 10
        assert session.scalars(
            select(Selection.image_id).where(Selection.round_id == round_id).order_by(Selection.rank)
        ).all() == [image_id for image_id, _, _ in stored]


def _project_with_a_labeled_first_batch(client, headers, i3a_dir, i3a_rows, offset: int, run_round_0=None) -> dict:
    """An xal-entropy project on 102 real cells whose round 0 (12 cells) is labeled, so that
    round 1 is queued. `run_round_0` computes round 0 where no worker listens."""
    rows = balanced_sample(i3a_rows, per_class=17, offset=offset)
    classes = sorted({row["pattern"] for row in rows})
    truth = {f"{row['image_id']}.png": row["pattern"] for row in rows}
    project = client.post(
        "/api/projects",
        headers=headers,
        json={
            "name": f"chunked-{uuid.uuid4().hex[:6]}",
            "classes": [{"name": c} for c in classes],
            "budget": 32,
            "initial_size": 12,
            "step_size": 10,
            "strategy": "xal-entropy",
            "strategy_options": {"representation": "concept", "centres": "classes"},
            "model_settings": {"max_epochs": 2, "patience": 2, "batch_size": 16},
        },
    ).json()
    files = [("files", (name, (i3a_dir / row["image_path"]).read_bytes(), "image/png")) for name, row in zip(truth, rows)]
    assert client.post(f"/api/projects/{project['id']}/images", headers=headers, files=files).status_code == 201
    assert client.post(f"/api/projects/{project['id']}/start", headers=headers).status_code == 202
    if run_round_0 is not None:
        run_round_0(_round_id(project["id"], 0))
    assert wait_for_round(client, headers, project["id"], 0, timeout=300)["n_selected"] == 12
    for _ in range(12):
        cell = client.post(f"/api/projects/{project['id']}/queue/next", headers=headers).json()["cell"]
        assert (
            client.post(
                f"/api/projects/{project['id']}/labels",
                headers=headers,
                json={"image_id": cell["image_id"], "class_name": truth[cell["filename"]]},
            ).status_code
            == 201
        )
    return project


def _round_id(project_id: int, number: int) -> int:
    from backend.core.db.models import Round
    from backend.core.db.session import new_session

    with new_session() as session:
        return session.scalar(select(Round.id).where(Round.project_id == project_id, Round.number == number))


def _round_row(round_id: int):
    from backend.core.db.models import Round
    from backend.core.db.session import new_session

    with new_session() as session:
        return session.get(Round, round_id)


@pytest.fixture
def chunks_in_this_process(private_queue):
    """Rounds run here (worker.round_job.run_round) score their pool in chunks of CHUNK_SIZE;
    no worker listens on the queue, so the chunk tasks sent stay unread."""
    from backend.core.settings import get_settings

    os.environ["XAL_SCORING_CHUNK_SIZE"] = str(CHUNK_SIZE)
    get_settings.cache_clear()
    yield
    del os.environ["XAL_SCORING_CHUNK_SIZE"]
    get_settings.cache_clear()


def _round_one_about_to_run(client, headers, i3a_dir, i3a_rows, offset: int) -> tuple[int, int, Path]:
    """Round 1 of a project whose first batch is labeled, queued and not yet run: its id, the
    attempt run_round will claim and that attempt's job folder, created empty."""
    from backend.core.db.models import Round
    from worker.jobs import job_folder
    from worker.round_job import run_round

    project = _project_with_a_labeled_first_batch(client, headers, i3a_dir, i3a_rows, offset, run_round_0=run_round)
    round_id = _round_id(project["id"], 1)
    attempt = _round_row(round_id).attempts + 1
    folder = job_folder(Round, round_id, attempt)
    folder.mkdir(parents=True)
    return round_id, attempt, folder


def test_the_rounds_task_computes_unclaimed_chunks_takes_over_a_dead_claimants_and_waits_for_a_live_ones(
    app_client, admin_headers, chunks_in_this_process, i3a_dir, i3a_rows
):
    """The round's task, run here with no worker on the queue, is the executor of its chunks:
    chunk 0 it claims and computes itself; chunk 1 was claimed by a worker that died (a claim
    not touched for a lease), so it computes it too; chunk 2's claimant is alive (a thread here,
    touching its claim and writing the chunk after a while), so it waits for it. Chunk tasks
    delivered afterwards, or of another attempt, change nothing."""
    from backend.core.db.models import Round
    from backend.core.settings import get_settings
    from worker.chunks import _chunk_outputs, score_chunk
    from worker.jobs import chunk_path, claim_path, job_folder, read_job, write_atomically
    from worker.round_job import run_round

    round_id, attempt, folder = _round_one_about_to_run(app_client, admin_headers, i3a_dir, i3a_rows, offset=230)
    long_ago = time.time() - 2 * get_settings().job_lease_seconds
    claim_path(folder, 1).touch()
    os.utime(claim_path(folder, 1), (long_ago, long_ago))
    claim_path(folder, 2).touch()
    progress_seen = []

    def live_claimant():
        while not (folder / "job.pkl").exists():
            time.sleep(0.05)
        time.sleep(0.5)  # the job's task is computing chunks 0 and 1 meanwhile
        claim_path(folder, 2).touch()
        progress_seen.append(_round_row(round_id).progress)
        write_atomically(chunk_path(folder, 2), _chunk_outputs(read_job(folder), folder, 2))

    claimant = threading.Thread(target=live_claimant)
    claimant.start()
    assert run_round(round_id) == "done"
    claimant.join()

    round_ = _round_row(round_id)
    assert round_.state == "done" and round_.n_selected == 10 and round_.attempts == attempt
    chunks = round_.selection_summary["chunks"]
    assert chunks["n"] == 3 and chunks["workers"] == 1  # one process: the task and the thread
    assert progress_seen[0]["phase"] == "scoring" and progress_seen[0]["chunks"] == 3
    assert not job_folder(Round, round_id, attempt).parent.exists()  # the job's files are removed

    for index in range(3):  # delivered after the round was stored: dropped
        assert score_chunk(round_id, attempt, index) == "dropped"
    assert score_chunk(round_id, attempt + 1, 0) == "dropped"  # a message of another attempt
    assert _round_row(round_id).n_selected == 10


def test_a_chunk_that_fails_ends_the_wait_of_the_rounds_task(
    app_client, admin_headers, chunks_in_this_process, i3a_dir, i3a_rows
):
    """Chunk 2's claimant (a thread here) fails the round, as a chunk task whose computation
    raises does: the round's task stops waiting, stores nothing and leaves the chunk's error
    on the round."""
    from backend.core.db.models import Round
    from worker.jobs import claim_path, job_folder, mark_failed
    from worker.round_job import run_round

    round_id, attempt, folder = _round_one_about_to_run(app_client, admin_headers, i3a_dir, i3a_rows, offset=260)
    claim_path(folder, 2).touch()

    def failing_claimant():
        while not (folder / "job.pkl").exists():
            time.sleep(0.05)
        claim_path(folder, 2).touch()
        mark_failed(Round, round_id, attempt, RuntimeError("chunk 2: out of memory"))

    claimant = threading.Thread(target=failing_claimant)
    claimant.start()
    # without its state check the task would wait a lease, take chunk 2 over, answer "done"
    assert run_round(round_id) == "failed"
    claimant.join()

    round_ = _round_row(round_id)
    assert round_.state == "failed" and round_.error == "RuntimeError: chunk 2: out of memory"
    assert round_.n_selected == 0
    assert not job_folder(Round, round_id, attempt).parent.exists()
