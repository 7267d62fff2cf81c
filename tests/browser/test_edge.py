"""The pages under their Content-Security-Policy in a real browser (the labeling page and the
dashboard are watched in test_ui.py): the API docs render with nothing from elsewhere, and a
violation is seen by the watch the other tests rely on."""

import pytest

from tests.browser.conftest import watch_for_errors

pytestmark = pytest.mark.slow


def test_the_api_docs_render_offline_and_a_csp_violation_is_caught(live_server, browser, screenshot):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors, requested = [], []
    watch_for_errors(page, errors)
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{live_server}/api/docs")
    page.wait_for_selector(".opblock-summary-path[data-path='/api/auth/token']")  # Swagger UI read the schema
    screenshot(page, "20-api-docs-1280x800")
    assert errors == []
    assert all(url.startswith(live_server) or url.startswith("data:") for url in requested), requested

    # the watch sees what the policy refuses
    page.evaluate("document.body.setAttribute('style', 'outline: 1px solid red')")
    page.wait_for_timeout(500)
    assert any("CSP violation" in error or "Content Security Policy" in error for error in errors), errors
    context.close()
