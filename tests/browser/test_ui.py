"""The labeling page and the admin dashboard in a real browser, against the real service:
an annotator signs in, labels a whole step by keyboard with the ground truth, undoes and
relabels, sees the queue wait for the next round and the next batch arrive by itself; an
admin watches the dashboard update. Screenshots go to test-output/screenshots/."""

import io
import uuid
import zipfile

import httpx
import pytest

from tests.browser.conftest import watch_for_errors
from tests.conftest import balanced_sample, make_user

pytestmark = pytest.mark.slow

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]
KEYS = {name: str(i + 1) for i, name in enumerate(CLASSES)}
BUDGET, INITIAL, STEP = 20, 10, 10
ROUND_TIMEOUT_MS = 150_000
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 820, "height": 1180}


@pytest.fixture(scope="module")
def project(live_server, worker, i3a_dir, i3a_rows):
    """A started project of real I3A cells: 60 in the pool, 30 in the test split; the users
    who sign in through the UI, with passwords; and the ground truth by image id."""
    _, admin_headers = make_user("admin")
    api = httpx.Client(base_url=live_server, headers=admin_headers, timeout=60)
    suffix = uuid.uuid4().hex[:6]
    users, user_ids = {}, {}
    for role in ("annotator", "admin"):
        username, password = f"ui-{role}-{suffix}", f"pw-{uuid.uuid4().hex}"
        created_user = api.post("/api/users", json={"username": username, "role": role, "password": password})
        assert created_user.status_code == 201
        users[role], user_ids[role] = (username, password), created_user.json()["id"]

    created = api.post(
        "/api/projects",
        json={
            "name": f"browser-{suffix}",
            "classes": [{"name": c, "key": KEYS[c]} for c in CLASSES],
            "strategy": "xal-margin",
            "budget": BUDGET,
            "initial_size": INITIAL,
            "step_size": STEP,
            "model_settings": {"max_epochs": 2, "patience": 2, "batch_size": 32},
        },
    )
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    assert api.put(f"/api/projects/{project_id}/members/{user_ids['annotator']}").status_code == 204

    pool_rows = balanced_sample(i3a_rows, per_class=10)
    files = [
        ("files", (f"{row['pattern']}-{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes(), "image/png"))
        for row in pool_rows
    ]
    assert api.post(f"/api/projects/{project_id}/images", files=files, data={"split": "pool"}).status_code == 201
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # the test split's classes: one folder per class
        for row in balanced_sample(i3a_rows, per_class=5, offset=10):
            archive.writestr(f"{row['pattern']}/{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes())
    test_upload = api.post(
        f"/api/projects/{project_id}/images",
        data={"split": "test"},
        files=[("files", ("test.zip", buffer.getvalue(), "application/zip"))],
    )
    assert test_upload.status_code == 201, test_upload.text

    images = api.get(f"/api/projects/{project_id}/images", params={"split": "pool", "limit": 1000}).json()["items"]
    truth = {image["id"]: image["filename"].split("-")[0] for image in images}
    assert api.post(f"/api/projects/{project_id}/start").status_code == 202
    yield {"id": project_id, "api": api, "users": users, "truth": truth, "url": live_server}
    api.close()


def sign_in(page, url, username, password):
    page.goto(f"{url}/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#project-list li")


def shown_cell(page) -> int:
    return int(page.get_attribute("#stage", "data-image-id"))


def wait_for_other_cell(page, previous: int | None, timeout: float = 15_000) -> int:
    page.wait_for_function(
        "previous => { const id = document.querySelector('#stage').dataset.imageId; return id && id !== String(previous); }",
        arg=previous,
        timeout=timeout,
    )
    return shown_cell(page)


def label_until_the_queue_is_empty(page, truth, first: int, limit: int) -> list[int]:
    """Labels each shown cell by its key until the page shows no cell; returns their ids."""
    labeled, cell = [], first
    while cell is not None:
        assert len(labeled) < limit, "more cells than the step holds"
        page.keyboard.press(KEYS[truth[cell]])
        labeled.append(cell)
        page.wait_for_function(
            "previous => { const id = document.querySelector('#stage').dataset.imageId;"
            " return (id && id !== String(previous)) || !document.querySelector('#waiting').hidden; }",
            arg=cell,
            timeout=15_000,
        )
        cell = None if page.is_visible("#waiting") else shown_cell(page)
    return labeled


def assert_every_control_is_keyboard_reachable(page):
    unreachable = page.evaluate("""() => [...document.querySelectorAll('button, input, select, textarea, a[href], summary')]
        .filter((el) => el.getClientRects().length && !el.closest('[hidden], dialog:not([open])'))
        .filter((el) => el.tabIndex < 0 || !(el.getAttribute('aria-label') || el.labels?.length || el.textContent.trim()
                                            || el.closest('label')))
        .map((el) => el.outerHTML.slice(0, 120))""")
    assert unreachable == [], unreachable


def test_annotator_labels_a_step_by_keyboard_and_the_dashboard_follows(project, browser, screenshot):
    url, truth, api, project_id = project["url"], project["truth"], project["api"], project["id"]
    annotator_context = browser.new_context(viewport=DESKTOP)
    page = annotator_context.new_page()
    errors = []
    watch_for_errors(page, errors)

    # sign in and pick the project
    sign_in(page, url, *project["users"]["annotator"])
    screenshot(page, "01-projects-1280x800")
    page.locator(f"#project-list .project[data-project-id='{project_id}'] a", has_text="Label").click()
    page.wait_for_url("**/label.html?project=*")
    first = wait_for_other_cell(page, None, timeout=ROUND_TIMEOUT_MS)  # round 0 may still be picking
    page.evaluate("window.__sameDocument = true")
    expect_text(page, "#class-buttons", "Homogeneous")
    assert page.inner_text(".class-button >> nth=0").split()[0] == "1"
    assert_every_control_is_keyboard_reachable(page)
    screenshot(page, "02-label-first-cell-1280x800")

    # label the first cell, undo, and the same cell comes back to be labeled again
    wrong = next(c for c in CLASSES if c != truth[first])
    page.keyboard.press(KEYS[wrong])
    second = wait_for_other_cell(page, first)
    page.keyboard.press("z")
    assert wait_for_other_cell(page, second) == first
    expect_text(page, "#status", f"labeled “{wrong}”")
    # zoom, contrast and overlay keys act on the viewer, not on the labels
    assert page.inner_text("#gain-readout").startswith("auto ")  # dim cells are stretched by default
    for key in ("+", "]", "o"):
        page.keyboard.press(key)
    assert page.inner_text("#zoom-readout") == "×1.5" and not page.inner_text("#gain-readout").startswith("auto")
    page.keyboard.press("-")
    page.keyboard.press("a")
    assert page.inner_text("#gain-readout").startswith("auto ")

    posted = []  # the page's POSTs while it labels the step: each label leases the next cell
    page.on("request", lambda r: posted.append(r) if r.method == "POST" else None)
    labeled = label_until_the_queue_is_empty(page, truth, first, limit=INITIAL)
    assert len(labeled) == INITIAL and len(set(labeled)) == INITIAL
    labels = [i for i, r in enumerate(posted) if r.url.endswith(f"/projects/{project_id}/labels")]
    assert len(labels) == INITIAL and all(posted[i].post_data_json["lease_next"] for i in labels)
    assert not [r.url for r in posted[: labels[-1]] if r.url.endswith("/queue/next")], "a request more per cell"

    # the queue waits for round 1, says so, and resumes by itself
    expect_text(page, "#waiting-title", "being computed")
    screenshot(page, "03-label-waiting-1280x800")
    next_batch_first = wait_for_other_cell(page, labeled[-1], timeout=ROUND_TIMEOUT_MS)
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    assert next_batch_first not in labeled
    page.wait_for_selector("#why .medoid img[src^='blob:']")  # xal-margin: the nearest medoids, to compare
    expect_text(page, "#why", "Model's class probabilities")
    page.wait_for_selector("#maps figure.map img[src^='blob:']")  # the round drew DeepTaylor and LRP maps
    page.keyboard.press("o")
    page.wait_for_selector(".overlay-map:not([hidden])")
    expect_text(page, "#progress", "Step 1")
    screenshot(page, "04-label-round-1-cell-1280x800")

    # an admin watches the dashboard
    admin_context = browser.new_context(viewport=DESKTOP)
    dashboard = admin_context.new_page()
    watch_for_errors(dashboard, errors)
    sign_in(dashboard, url, *project["users"]["admin"])
    dashboard.locator(f"#project-list .project[data-project-id='{project_id}'] a", has_text="Dashboard").click()
    dashboard.wait_for_selector("#rounds tr[data-round='1'][data-state='done']")
    assert "%" in dashboard.inner_text("#rounds tr[data-round='1'] td.aca")
    dashboard.wait_for_selector("#curve svg[data-points='1']")
    dashboard.wait_for_selector("#confusion table.confusion")
    expect_text(dashboard, "#annotators", project["users"]["annotator"][0])
    assert_every_control_is_keyboard_reachable(dashboard)

    # unsure: the cell goes back to the queue with a note, and another comes first
    page.locator("#note").fill("faint speckles, could be homogeneous")
    page.keyboard.press("Escape")
    page.keyboard.press("u")
    after_unsure = wait_for_other_cell(page, next_batch_first)

    # on a tablet: the same leased cell, labeled by touch
    tablet_context = browser.new_context(viewport=TABLET, has_touch=True)
    tablet = tablet_context.new_page()
    watch_for_errors(tablet, errors)
    sign_in(tablet, url, *project["users"]["annotator"])
    tablet.goto(f"{url}/label.html?project={project_id}")
    assert wait_for_other_cell(tablet, None) == after_unsure
    tablet.wait_for_selector("#maps figure.map img[src^='blob:']")
    screenshot(tablet, "05-label-tablet-820x1180")
    tablet.locator(".class-button", has_text=truth[after_unsure]).tap()
    touched_next = wait_for_other_cell(tablet, after_unsure)
    tablet_context.close()

    # the rest of the step by keyboard (the page still shows the cell the tablet labeled)
    page.goto(f"{url}/label.html?project={project_id}")
    assert wait_for_other_cell(page, None) == touched_next
    rest = label_until_the_queue_is_empty(page, truth, touched_next, limit=STEP)
    assert next_batch_first in rest  # the unsure cell came back last
    assert len(rest) == STEP - 1

    # the last round trains on the budget and the project finishes; the dashboard follows by itself
    dashboard.wait_for_selector("#rounds tr[data-round='2'][data-state='done']", timeout=ROUND_TIMEOUT_MS)
    dashboard.wait_for_selector("#curve svg[data-points='2']")
    expect_text(dashboard, "#project-state", "finished")
    expect_text(dashboard, "#budget", f"{BUDGET} / {BUDGET}")
    expect_text(page, "#waiting-title", "budget is spent")
    screenshot(page, "06-label-finished-1280x800")
    screenshot(dashboard, "07-dashboard-1280x800")
    dashboard.set_viewport_size(TABLET)
    screenshot(dashboard, "08-dashboard-tablet-820x1180")

    rounds = api.get(f"/api/projects/{project_id}/rounds").json()
    assert [r["state"] for r in rounds] == ["done", "done", "done"]
    exported = api.get(f"/api/projects/{project_id}/labels/export", params={"format": "json"}).json()
    assert len(exported) == BUDGET
    assert all(row["class_name"] == truth[row["image_id"]] for row in exported)
    history = api.get(f"/api/projects/{project_id}/labels/export", params={"format": "json", "history": "true"}).json()
    assert any(row["image_id"] == first and row["retracted_at"] and row["class_name"] == wrong for row in history)
    assert errors == []
    annotator_context.close()
    admin_context.close()


def expect_text(page, selector: str, text: str, timeout: float = 15_000):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "([selector, text]) => (document.querySelector(selector)?.textContent || '').includes(text)",
            arg=[selector, text],
            timeout=timeout,
        )
    except PlaywrightTimeout:
        shown = page.evaluate("selector => document.querySelector(selector)?.textContent", selector)
        raise AssertionError(f"{selector} does not say {text!r}; it says {shown!r}") from None


def test_label_first_then_reveal_keeps_both_answers_and_survives_a_lost_connection(
    project, browser, screenshot, i3a_dir, i3a_rows
):
    """A blind first answer, the hints revealed, a changed answer; a label typed while the
    network is down is sent when it is back."""
    url, api = project["url"], project["api"]
    username, password = f"ui-blind-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    blind_user = api.post("/api/users", json={"username": username, "role": "annotator", "password": password})
    assert blind_user.status_code == 201
    created = api.post(
        "/api/projects",
        json={
            "name": f"blind-{uuid.uuid4().hex[:6]}",
            "classes": [{"name": c, "key": KEYS[c]} for c in CLASSES],
            "strategy": "entropy",
            "budget": 8,
            "initial_size": 4,
            "step_size": 4,
            "reveal_after_label": True,
            "model_settings": {"max_epochs": 1},
        },
    )
    assert created.status_code == 201, created.text
    blind_id = created.json()["id"]
    assert api.put(f"/api/projects/{blind_id}/members/{blind_user.json()['id']}").status_code == 204
    files = [
        ("files", (f"cell-{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes(), "image/png"))
        for row in balanced_sample(i3a_rows, per_class=1, offset=40)
    ]
    assert api.post(f"/api/projects/{blind_id}/images", files=files, data={"split": "pool"}).status_code == 201
    assert api.post(f"/api/projects/{blind_id}/start").status_code == 202

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors = []
    watch_for_errors(page, errors)
    sign_in(page, url, username, password)
    page.goto(f"{url}/label.html?project={blind_id}")
    first = wait_for_other_cell(page, None, timeout=ROUND_TIMEOUT_MS)
    expect_text(page, "#why", "hidden until you have labeled")
    expect_text(page, "#maps", "hidden until you have labeled")

    page.keyboard.press("?")
    assert page.is_visible("#help") and "label as Golgi" in page.inner_text("#help")
    page.keyboard.press("Escape")
    assert not page.is_visible("#help")

    page.keyboard.press(KEYS["Homogeneous"])  # blind answer
    page.wait_for_selector("#reveal-bar:not([hidden])")
    expect_text(page, "#why", "round 0")
    screenshot(page, "09-label-reveal-1280x800")
    page.keyboard.press(KEYS["Speckled"])  # changed after the reveal
    second = wait_for_other_cell(page, first)
    page.keyboard.press(KEYS["Golgi"])
    page.wait_for_selector("#reveal-bar:not([hidden])")
    page.keyboard.press("Enter")  # kept
    third = wait_for_other_cell(page, second)

    context.set_offline(True)
    page.keyboard.press(KEYS["NuMem"])
    expect_text(page, "#status", "cannot be reached")
    context.set_offline(False)
    page.wait_for_selector("#reveal-bar:not([hidden])", timeout=20_000)
    page.keyboard.press("Enter")
    wait_for_other_cell(page, third)

    history = api.get(f"/api/projects/{blind_id}/labels/export", params={"format": "json", "history": "true"}).json()
    answers = {}
    for row in history:
        answers.setdefault(row["image_id"], []).append((row["class_name"], bool(row["superseded_at"])))
    assert answers[first] == [("Homogeneous", True), ("Speckled", False)]
    assert answers[second] == [("Golgi", False)] and answers[third] == [("NuMem", False)]
    assert api.get(f"/api/projects/{blind_id}/stats").json()["reveal"]["changed"] == 1
    assert errors == []
    context.close()


def test_admin_creates_a_project_and_imports_a_folder_of_classes_and_a_zip(
    live_server, browser, screenshot, i3a_dir, i3a_rows, tmp_path
):
    _, admin_headers = make_user("admin")
    username, password = f"ui-creator-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    api = httpx.Client(base_url=live_server, headers=admin_headers, timeout=60)
    assert api.post("/api/users", json={"username": username, "role": "admin", "password": password}).status_code == 201
    annotator = api.post("/api/users", json={"username": f"ui-member-{uuid.uuid4().hex[:6]}", "role": "annotator"}).json()
    folder = tmp_path / "test-split"
    for row in balanced_sample(i3a_rows, per_class=2, offset=60):
        (folder / row["pattern"]).mkdir(parents=True, exist_ok=True)
        (folder / row["pattern"] / f"{row['image_id']}.png").write_bytes((i3a_dir / row["image_path"]).read_bytes())
    archive = tmp_path / "pool.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for row in balanced_sample(i3a_rows, per_class=3, offset=70):
            zipped.writestr(f"{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes())

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors = []
    watch_for_errors(page, errors)
    sign_in(page, live_server, username, password)
    page.get_by_role("link", name="New project").click()
    form = page.locator("#create-form")
    name = f"created-{uuid.uuid4().hex[:6]}"
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("Budget B").fill("12")
    form.get_by_label("Strategy").select_option("xal-margin")
    form.get_by_label("Representation").select_option("concept")
    form.get_by_label("Label first, then reveal").check()
    screenshot(page, "10-dashboard-new-project-1280x800")
    form.get_by_role("button", name="Create project").click()
    page.wait_for_url("**/admin.html?project=*")
    project_id = int(page.url.split("project=")[1])
    created = api.get(f"/api/projects/{project_id}").json()
    assert created["name"] == name and created["budget"] == 12 and created["reveal_after_label"]
    assert [(c["name"], c["key"]) for c in created["classes"]] == [(c, KEYS[c]) for c in CLASSES]
    assert created["strategy"] == "xal-margin" and created["strategy_options"]["representation"] == "concept"

    expect_text(page, "#members", "No members yet")
    page.locator("#member-user").select_option(str(annotator["id"]))
    page.get_by_role("button", name="Add member").click()
    page.wait_for_selector(f"#members tr[data-user-id='{annotator['id']}']")
    page.locator("#members").scroll_into_view_if_needed()
    screenshot(page, "11-dashboard-members-1280x800")
    members = api.get(f"/api/projects/{project_id}/members").json()
    assert [(m["username"], m["role"]) for m in members] == [(annotator["username"], "annotator")]
    page.get_by_role("button", name=f"Remove {annotator['username']} from the project").click()
    expect_text(page, "#members", "No members yet")
    assert api.get(f"/api/projects/{project_id}/members").json() == []

    page.locator("#import-form select[name=split]").select_option("test")
    page.locator("#import-form input[name=folder]").set_input_files(str(folder))
    expect_text(page, "#import-status", "Imported 12 images into the test split")
    page.locator("#import-form select[name=split]").select_option("pool")
    page.locator("#import-form input[name=files]").set_input_files(str(archive))
    expect_text(page, "#import-status", "Imported 18 images into the pool split")
    expect_text(page, "#pool-count", "of 18")
    page.locator("#pool-split").select_option("test")
    expect_text(page, "#pool-count", "of 12")
    page.wait_for_selector("#pool .thumb img[src^='blob:']")
    tests = api.get(f"/api/projects/{project_id}/images", params={"split": "test", "limit": 100}).json()["items"]
    assert {image["reference_class"] for image in tests} == set(CLASSES)  # the folders named the classes
    expect_text(page, "#budget", "Pool 18 cells · test split 12 cells")
    assert errors == []
    context.close()
    api.close()
