"""Fixtures of the tests of jobs computed in chunks (worker.jobs), imported by their modules:
two worker processes on a queue of their own, with the module's `scoring_chunk_size` fixture
as XAL_SCORING_CHUNK_SIZE."""

import os
import sys
import uuid

import pytest

from backend.testing import drop_queue, start_worker, stop


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
    drop_queue(queue)


@pytest.fixture
def two_chunking_workers(private_queue, scoring_chunk_size, tmp_path):
    """One thread each: two of them share the 2 cores of a CI machine, and a test can compute
    its one-pass reference in the same arithmetic (torch.set_num_threads(1))."""
    env = {"XAL_QUEUE": private_queue, "XAL_SCORING_CHUNK_SIZE": str(scoring_chunk_size), "OMP_NUM_THREADS": "1"}
    workers = [start_worker(tmp_path / f"worker-{i}.log", env) for i in range(2)]
    yield workers
    for worker in workers:
        stop(worker)
    sys.stderr.write(f"\n[chunking worker logs: {tmp_path}]\n")
