"""The edge, as a first-time user and an attacker meet it: request bodies are limited before
they are read (and an upload's token is checked first), forwarded addresses are believed only
from a configured proxy, non-finite JSON numbers are refused, every answer carries the security
headers, and the API docs need nothing from elsewhere."""

import asyncio
import base64
import hashlib
import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from html.parser import HTMLParser

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import delete, select

from backend.testing import ROOT, api_is_up, stop, wait_for
from tests.conftest import free_port, make_user

MiB = 2**20


def post_straight(app, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, bytes, int]:
    """POSTs straight to the ASGI app, the body in `chunks`; returns the status, the answer and how
    many body bytes the app asked for (a TestClient reads the whole body before the app starts)."""
    asked = 0
    status, answer = 0, b""

    async def exchange() -> None:
        pending, answered = list(chunks), asyncio.Event()

        async def receive():
            nonlocal asked
            if not pending:
                await answered.wait()
                return {"type": "http.disconnect"}
            chunk = pending.pop(0)
            asked += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

        async def send(message):
            nonlocal status, answer
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                answer += message.get("body", b"")
                if not message.get("more_body"):
                    answered.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)

    # in a thread of its own: the browser tests' Playwright keeps an event loop running in this one
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, exchange()).result()
    return status, answer, asked


def new_project(app_client, admin_headers) -> int:
    created = app_client.post(
        "/api/projects",
        headers=admin_headers,
        json={"name": f"edge-{uuid.uuid4().hex[:8]}", "classes": [{"name": "a"}, {"name": "b"}]},
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def noise_png(side: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- 1. bodies are limited before they are read ------------------------------------------------


def test_a_json_body_over_the_limit_is_refused_before_it_is_read(app_client):
    json_type = {"Content-Type": "application/json"}
    declared = {**json_type, "Content-Length": str(300 * MiB)}
    status, answer, asked = post_straight(app_client.app, "/api/auth/token", declared, [b" " * MiB] * 4)
    assert (status, asked) == (413, 0)
    assert b"larger than 65536 bytes (XAL_MAX_JSON_BYTES)" in answer

    # without a Content-Length the body is counted as it arrives
    status, answer, asked = post_straight(app_client.app, "/api/auth/token", json_type, [b" " * 16384] * 64)
    assert status == 413 and asked <= 65536 + 16384
    # whatever its type says
    text = {"Content-Type": "text/plain"}
    status, answer, asked = post_straight(app_client.app, "/api/auth/token", text, [b"x" * 16384] * 64)
    assert status == 413 and asked <= 65536 + 16384 and b"XAL_MAX_JSON_BYTES" in answer

    refused = app_client.post("/api/auth/token", json={"username": "someone", "password": "x" * 70_000})
    assert refused.status_code == 413
    assert app_client.post("/api/auth/token", json={"username": "someone", "password": "wrong"}).status_code == 401


def test_an_upload_checks_the_token_before_it_reads_the_body(app_client, admin_headers):
    project_id = new_project(app_client, admin_headers)
    multipart = {"Content-Type": "multipart/form-data; boundary=cut", "Content-Length": str(200 * MiB)}
    body = [b"--cut\r\nContent-Disposition: form-data; name=files; filename=a.png\r\n\r\n" + b"x" * MiB] * 4
    for credentials in ({}, {"Authorization": "Bearer xal_not-a-token"}):
        headers = {**multipart, **credentials}
        status, answer, asked = post_straight(app_client.app, f"/api/projects/{project_id}/images", headers, body)
        assert (status, asked) == (401, 0)
        assert b"a valid bearer token is required" in answer


def test_an_upload_may_be_larger_than_a_json_body_up_to_its_own_limit(app_client, admin_headers, monkeypatch):
    from backend.core.settings import get_settings

    project_id = new_project(app_client, admin_headers)
    settings = get_settings()
    png = noise_png()
    monkeypatch.setattr(settings, "max_json_bytes", 1000)
    assert len(png) > 1000
    imported = app_client.post(
        f"/api/projects/{project_id}/images", headers=admin_headers, files=[("files", ("noise.png", png, "image/png"))]
    )
    assert imported.status_code == 201, imported.text
    monkeypatch.setattr(settings, "max_upload_bytes", 1000)
    too_large = app_client.post(
        f"/api/projects/{project_id}/images", headers=admin_headers, files=[("files", ("other.png", png[::-1], "image/png"))]
    )
    assert too_large.status_code == 413
    assert "larger than 1000 bytes (XAL_MAX_UPLOAD_BYTES); split the upload" in too_large.json()["detail"]


# --- 3. forwarded addresses are believed only from a configured proxy --------------------------


@contextmanager
def serving(log_path, **settings: str) -> Iterator[str]:
    """`xal serve --no-worker` (a real uvicorn) on the session's database, with `settings` over its environment."""
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve", "--no-worker", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=2) as client:
            wait_for(lambda: api_is_up(client) or process.poll() is not None, timeout=60, message="the API")
        assert process.poll() is None, log_path.read_text()[-3000:]
        yield url
    finally:
        stop(process)


def recorded_addresses(username: str) -> list[str]:
    from backend.core.db.models import LoginAttempt
    from backend.core.db.session import new_session

    with new_session() as session:
        return list(session.scalars(select(LoginAttempt.client_ip).where(LoginAttempt.username == username)))


def test_a_forwarded_address_is_believed_only_from_a_configured_proxy(service_env, tmp_path):
    from backend.core.db.models import LoginAttempt
    from backend.core.db.session import new_session

    forged = f"203.0.113.{uuid.uuid4().int % 250 + 1}"  # an address for documentation: nobody's
    cases = {"direct": ({}, "127.0.0.1"), "behind a proxy": ({"XAL_TRUSTED_PROXIES": "127.0.0.1"}, forged)}
    usernames = []
    try:
        for case, (settings, seen) in cases.items():
            username = f"edge-{uuid.uuid4().hex[:8]}"
            usernames.append(username)
            with serving(tmp_path / f"{case}.log", **settings) as url:
                failed = httpx.post(
                    f"{url}/api/auth/token",
                    json={"username": username, "password": "guess"},
                    headers={"X-Forwarded-For": forged},
                    timeout=30,
                )
            assert failed.status_code == 401
            assert recorded_addresses(username) == [seen], case  # the address the sign-in rate limit counts
    finally:
        with new_session() as session:  # other tests sign in from 127.0.0.1
            session.execute(delete(LoginAttempt).where(LoginAttempt.username.in_(usernames)))
            session.commit()


# --- 6. numbers that are not finite ------------------------------------------------------------


@pytest.mark.parametrize("number", ["1e400", "NaN", "-Infinity"])
def test_a_json_number_that_is_not_finite_is_refused_on_every_route(app_client, admin_headers, number):
    project_id = new_project(app_client, admin_headers)
    _, annotator = make_user("annotator", project_ids=[project_id])
    label = f'{{"image_id": 1, "class_name": "a", "duration_ms": {number}}}'
    requests = [
        ("POST", "/api/auth/token", {}, f'{{"username": {number}, "password": "x"}}'),
        ("POST", "/api/auth/token", {}, f'{{"username": "someone", "password": "x", "extra": [{number}]}}'),
        ("POST", "/api/users", admin_headers, f'{{"username": "u{uuid.uuid4().hex[:6]}", "role": {number}}}'),
        (
            "POST",
            "/api/projects",
            admin_headers,
            f'{{"name": "n{uuid.uuid4().hex[:6]}", "classes": [{{"name": "a"}}, {{"name": "b"}}], '
            f'"strategy": "xal-margin", "strategy_options": {{"pca_dims": {number}}}}}',
        ),
        ("PATCH", f"/api/projects/{project_id}", admin_headers, f'{{"model_settings": {{"lr": {number}}}}}'),
        ("POST", f"/api/projects/{project_id}/labels", annotator, label),
        ("POST", f"/api/projects/{project_id}/queue/skip", annotator, f'{{"image_id": {number}}}'),
    ]
    for method, path, headers, body in requests:
        response = app_client.request(method, path, headers={**headers, "Content-Type": "application/json"}, content=body)
        assert response.status_code == 422, (method, path, response.text)
        assert "not finite" in response.json()["detail"]
    # the words in a text are only words
    described = app_client.patch(f"/api/projects/{project_id}", headers=admin_headers, json={"description": f"{number} NaN"})
    assert described.status_code == 200


# --- 7. security headers ------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(app_client, admin_headers):
    pages = ("/", "/index.html", "/label.html", "/admin.html", "/js/label.js")
    for path in (*pages, "/api/health", "/api/me", "/nothing-here"):
        headers = app_client.get(path).headers
        policy = headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"


class InlineCode(HTMLParser):
    """What a Content-Security-Policy without 'unsafe-inline' refuses in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("an inline <script>")
        if tag == "style":
            self.found.append("a <style> element")
        self.found += [f"<{tag} {name}=...>" for name in names if name == "style" or name.startswith("on")]
        self.found += [f"<{tag} {name}=javascript:...>" for name, value in attrs if (value or "").startswith("javascript:")]


# what the scripts would have to do to put inline style or code into a page
INLINE_FROM_SCRIPT = re.compile(
    r"""style:\s*[`'"]|setAttribute\(\s*["']style|innerHTML\s*=(?!\s*""\s*;)|\beval\(|new Function\("""
)


def test_the_pages_have_no_inline_script_or_style():
    pages = sorted((ROOT / "frontend").glob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        parser = InlineCode()
        parser.feed(page.read_text())
        assert parser.found == [], page.name
    for script in sorted((ROOT / "frontend" / "js").glob("*.js")):
        assert not INLINE_FROM_SCRIPT.findall(script.read_text()), script.name


# --- 8. the API docs come from the installation ------------------------------------------------


def test_the_api_docs_are_served_from_the_installation(app_client):
    docs = app_client.get("/api/docs")
    assert docs.status_code == 200
    assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', docs.text))  # no other host
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', docs.text)
    assert {asset.rsplit("/", 1)[1] for asset in assets} == {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}
    for asset in assets:
        served = app_client.get(asset)
        assert served.status_code == 200 and len(served.content) > 1000, asset
    # the page's one inline script, which starts Swagger UI, is allowed by its hash and by nothing else
    (script,) = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}'" in docs.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in docs.headers["Content-Security-Policy"]
    assert app_client.get("/api/openapi.json").status_code == 200
    assert app_client.get("/redoc").status_code == 404  # it loaded ReDoc from a CDN
