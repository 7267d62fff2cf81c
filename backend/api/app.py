"""The FastAPI application: routers under /api, OpenAPI at /api/docs, the guards of the edge
(body limits, security headers), and the sweeper that re-sends the jobs nobody holds."""

import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, TimeoutError as PoolTimeoutError

from backend.api import auth, clustering, images, labels, projects, rounds
from backend.api.docs import add_docs
from backend.api.edge import BodyGuard, SecurityHeaders
from backend.core.errors import DomainError, Unauthorized
from backend.core.outbox import send_waiting_jobs
from backend.core.settings import get_settings

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
DATABASE_RETRY_AFTER_S = 5

log = logging.getLogger(__name__)


def _sweep_jobs(stop: threading.Event, interval: float) -> None:
    """Rounds and pool clusterings whose worker died, or that never reached the broker, are
    sent again (backend.core.outbox). A thread of the API process because the API runs in
    every deployment, the embedded one included; several API processes may sweep at once
    (sending takes each job's lease first)."""
    while not stop.wait(interval):
        _sweep_once(interval)


def _sweep_once(interval: float) -> None:
    try:
        send_waiting_jobs()
    except Exception as error:  # noqa: BLE001 - the database restarting: the next pass tries again
        log.warning("the job sweep failed (%s); trying again in %s s", error, interval)


@asynccontextmanager
async def serving(_app: FastAPI) -> AsyncIterator[None]:
    """The API process's life beside its requests. The first sweep runs before the first
    request: jobs a crash left behind are sent at once, and that pass, which builds the sweep's
    statements (about 50 ms of CPU against 7 ms for a later one), does not hold the interpreter
    while requests wait. Later sweeps run in a thread. What start-up imported and built is then
    frozen out of the garbage collector's reach (gc.freeze): it lives as long as the process,
    and a full collection that walked its ~125,000 objects paused every request in flight for
    80-280 ms (bench/README.md, "The labeling hot path")."""
    interval = get_settings().job_lease_seconds / 4
    _sweep_once(interval)
    gc.freeze()
    stop = threading.Event()
    sweeper = threading.Thread(target=_sweep_jobs, args=(stop, interval), name="job-sweeper", daemon=True)
    sweeper.start()
    yield
    stop.set()
    sweeper.join()


def create_app(sweep_jobs: bool = True) -> FastAPI:
    """The API; `sweep_jobs` False leaves out `serving` (tests that run the app in their own
    process and decide when jobs are sent)."""
    app = FastAPI(
        lifespan=serving if sweep_jobs else None,
        title="XAL",
        description="Annotation service with explainable active learning for HEp-2 cell images.",
        version="0.1.0",
        openapi_url="/api/openapi.json",
        docs_url=None,  # served from the installation by add_docs
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        openapi_tags=[{"name": tag} for tag in ("auth", "projects", "images", "labeling", "rounds", "clustering", "meta")],
    )
    add_docs(app, "/api/docs")
    app.add_middleware(BodyGuard)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(DomainError)
    async def domain_error(_request: Request, error: DomainError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
        return JSONResponse({"detail": error.message, **error.details}, status_code=error.status_code, headers=headers)

    @app.exception_handler(DataError)
    async def unstorable_value(_request: Request, error: DataError) -> JSONResponse:
        """A value the schema allows but the database cannot hold (an id beyond its integer
        range, a NUL character in a text): the request is refused and nothing is stored."""
        return JSONResponse({"detail": f"a value of this request cannot be stored: {error.orig}".strip()}, status_code=422)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeoutError)
    async def database_unavailable(_request: Request, error: Exception) -> JSONResponse:
        """The database restarting, unreachable or out of connections: the request may simply be
        sent again (a label sent twice is one label: the second relabels the cell the same)."""
        log.warning("database unavailable: %s", error)
        return JSONResponse(
            {"detail": f"the database is unavailable for a moment; retry in {DATABASE_RETRY_AFTER_S} seconds"},
            status_code=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    # The router tries routes in order: the labeling routes, which annotators call for every
    # cell, come first (no path of one router matches another's, so the order changes nothing else).
    for module in (labels, auth, projects, images, rounds, clustering):
        app.include_router(module.router, prefix="/api")

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # the browser UI: static files, no build step; mounted last so /api wins
    app.mount("/", StaticFiles(directory=FRONTEND, html=True, check_dir=False), name="frontend")
    return app
