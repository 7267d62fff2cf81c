"""The API's documentation page, /api/docs: Swagger UI served from the installation (the files
the fastapi-offline package ships), not from a CDN, so that it works offline and no third-party
script runs on the origin that keeps the token."""

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from backend.api.edge import content_security_policy

SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"


def add_docs(app: FastAPI, url: str) -> None:
    assets = f"{url}/assets"
    app.mount(assets, StaticFiles(directory=SWAGGER_UI), name="docs-assets")
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "",
        title=f"{app.title} API",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
    ).body
    headers = {"Content-Security-Policy": _policy_for(page)}

    @app.get(url, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)


def _policy_for(page: bytes) -> str:
    """The site's policy, but the page's inline script (FastAPI's, which starts Swagger UI) is
    allowed by its hash, and Swagger UI's stylesheet draws its icons from data: URLs."""
    script = re.search(rb"<script>(.*?)</script>", page, re.DOTALL)
    assert script is not None, "FastAPI's Swagger UI page starts it with an inline script"
    digest = base64.b64encode(hashlib.sha256(script.group(1)).digest()).decode()
    return content_security_policy({"script-src": f"'self' 'sha256-{digest}'", "img-src": "'self' data:"})
