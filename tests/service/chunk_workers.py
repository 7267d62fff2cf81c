"""Fixtures of the tests of jobs computed in chunks (worker.jobs), imported by their modules:
two worker processes on a queue of their own, with the module's `scoring_chunk_size` fixture
as XAL_SCORING_CHUNK_SIZE."""

import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import ROOT, stop


@pytest.fixture
def private_queue(service_env):
    """The API and the workers of this test use a queue of their own, so that no other worker
    of the session (with the default chunk size) takes these jobs."""
    from backend.core.settings import get_settings

    queue = f"{service_env['XAL_QUEUE']}-chunks-{uuid.uuid4().hex[:6]}"
    saved = os.environ["XAL_QUEUE"]
    os.environ["XAL_QUEUE"] = queue
    get_settings.cache_clear()
    yield queue
    os.environ["XAL_QUEUE"] = saved
    get_settings.cache_clear()
    import redis

    redis.Redis.from_url(service_env["XAL_BROKER_URL"]).delete(queue, f"_kombu.binding.{queue}")


@pytest.fixture
def two_chunking_workers(private_queue, scoring_chunk_size, tmp_path):
    """One thread each: two of them share the 2 cores of a CI machine, and a test can compute
    its one-pass reference in the same arithmetic (torch.set_num_threads(1))."""
    env = {
        **os.environ,
        "XAL_QUEUE": private_queue,
        "XAL_SCORING_CHUNK_SIZE": str(scoring_chunk_size),
        "OMP_NUM_THREADS": "1",
    }
    logs = [open(tmp_path / f"worker-{i}.log", "w") for i in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "worker", "--concurrency", "1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    yield workers
    for worker, log in zip(workers, logs):
        stop(worker)
        log.close()
    sys.stderr.write(f"\n[chunking worker logs: {tmp_path}]\n")
