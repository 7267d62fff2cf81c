"""The outbox's sweeper: a job that a crash left queued and unsent is sent as the API starts,
before its first request, not a sweep interval later."""

from fastapi.testclient import TestClient


def test_the_api_sends_a_job_left_queued_as_it_starts(app_client, open_project):
    from backend.api.app import create_app
    from backend.core.db.models import Round
    from backend.core.db.session import new_session
    from backend.core.jobs import JobState
    from backend.core.settings import get_settings

    with new_session() as session:  # as a crash between the commit and the send leaves it
        stranded = Round(project_id=open_project, number=1, state=JobState.QUEUED, lease_expires_at=None)
        session.add(stranded)
        session.commit()
        round_id = stranded.id
    assert get_settings().job_lease_seconds / 4 >= 10  # the periodic sweep would come that much later

    with TestClient(create_app()):
        with new_session() as session:
            sent = session.get(Round, round_id)
            # sending takes the job's lease; the session's worker may have taken the round since
            assert sent is not None and (sent.lease_expires_at is not None or sent.state != JobState.QUEUED)
