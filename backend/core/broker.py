"""The Celery app, as the API sends jobs with it (by task name: backend.core.jobs.Task) and
as the workers run them (worker.celery_app adds their task modules). Broker: Redis in
production, the filesystem transport (folders under the data dir, no server) in the embedded
default. Results go to the database through the ORM, so Celery keeps no result backend."""

from collections.abc import Sequence
from functools import lru_cache

from celery import Celery

from backend.core.settings import get_settings


def make_celery(include: Sequence[str] = ()) -> Celery:
    settings = get_settings()
    app = Celery("xal", broker=settings.resolved_broker_url, include=list(include))
    app.conf.update(
        task_default_queue=settings.queue,
        task_ignore_result=True,
        # a task whose worker dies is redelivered, and tasks are idempotent (a round or clustering
        # is also re-sent by the API's sweeper once its lease runs out: backend.core.outbox)
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Publishing gives up after two tries, so that a broker that is down answers a label
        # submit in about a second; the round stays queued and the sweeper sends it later.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
    )
    if settings.embedded_broker:
        folder = settings.broker_dir
        for sub in ("messages", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # the exchange tables; kombu's default is ./control, in whatever folder the process runs
            "control_folder": str(folder / "control"),
        }
    else:
        # without timeouts a broker that hangs (no answer, TCP still open) blocks a publish forever
        app.conf.broker_transport_options = {"socket_connect_timeout": 3, "socket_timeout": 3}
    return app


@lru_cache(maxsize=1)
def sender() -> Celery:
    """The app that sends tasks by name; it imports no task module."""
    return make_celery()
