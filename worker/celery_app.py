"""The workers' Celery app: the shared configuration (backend.core.broker) with the task modules."""

from backend.core.broker import make_celery

celery_app = make_celery(include=["worker.tasks", "worker.chunks"])
