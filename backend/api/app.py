"""The FastAPI application: routers under /api, OpenAPI at /api/docs."""
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi.responses import JSONResponse

from backend.api import auth, clustering, images, labels, projects, rounds
from backend.errors import DomainError

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"


def create_app() -> FastAPI:
    app = FastAPI(
        title="XAL",
        description="Annotation service with explainable active learning for HEp-2 cell images.",
        version="0.1.0",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )

    @app.exception_handler(DomainError)
    async def domain_error(_request: Request, error: DomainError) -> JSONResponse:
        return JSONResponse({"detail": error.message, **error.details}, status_code=error.status_code)

    for module in (auth, projects, images, labels, rounds, clustering):
        app.include_router(module.router, prefix="/api")

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # the browser UI: static files, no build step; mounted last so /api wins
    app.mount("/", StaticFiles(directory=FRONTEND, html=True, check_dir=False), name="frontend")
    return app
