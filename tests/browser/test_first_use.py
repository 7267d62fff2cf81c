"""What a first-time user hits (issue 14, items 12, 15, 16, 17), in a real browser against the
real service: a folder of more than 1,000 files imports in batches with its masks and a
labels.csv; the dashboard's per-round counts are true while a round runs (reserve labels
included); "Why this cell" says what its score means and compares distances that differ
little; chart labels are not clipped; every page has its favicon.

The rounds of the dashboard and labeling tests are written into the database as a worker would
store them (no worker runs): their numbers are chosen, so the pages can be checked against them.
Screenshots go to test-output/screenshots/ (21-30)."""

import csv
import math
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from tests.browser.conftest import SCREENSHOTS, watch_for_errors
from tests.browser.test_ui import DESKTOP, expect_text, sign_in
from tests.conftest import balanced_sample, make_user

pytestmark = pytest.mark.slow

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


def new_admin(api) -> tuple[str, str]:
    username, password = f"ui-first-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    assert api.post("/api/users", json={"username": username, "role": "admin", "password": password}).status_code == 201
    return username, password


def new_project(api, classes=CLASSES, **spec) -> int:
    created = api.post(
        "/api/projects",
        json={
            "name": f"first-{uuid.uuid4().hex[:6]}",
            "classes": [{"name": c, "key": str(i + 1)} for i, c in enumerate(classes)],
            "budget": 20,
            **spec,
        },
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def element_screenshot(locator, name: str) -> None:
    """Saves test-output/screenshots/<name>.png of one part of a page."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def record_status_texts(page) -> None:
    """Keeps in window.__statusTexts every text #import-status shows, however briefly."""
    page.evaluate("""() => {
        window.__statusTexts = [];
        const box = document.querySelector('#import-status');
        new MutationObserver(() => window.__statusTexts.push(box.textContent))
            .observe(box, { childList: true, subtree: true, characterData: true });
    }""")


def zip_entries(body: bytes) -> int:
    """The files in an upload's zip: its central directory headers."""
    return body.count(b"PK\x01\x02")


def test_a_flat_folder_of_more_than_1000_files_imports_in_batches_with_its_masks(
    live_server, browser, screenshot, i3a_dir, i3a_rows, tmp_path
):
    """1,102 files in one folder, no sub-folders: 540 cells with their `_mask` files, 20 copies
    of cells (duplicates, in the last batch) and 2 files that are no images."""
    _, admin_headers = make_user("admin")
    api = httpx.Client(base_url=live_server, headers=admin_headers, timeout=60)
    username, password = new_admin(api)
    project_id = new_project(api)
    folder = tmp_path / "flat-folder"
    folder.mkdir()
    rows = [row for row in i3a_rows if row["mask_path"]][:540]
    for n, row in enumerate(rows):
        (folder / f"{n:05d}.png").write_bytes((i3a_dir / row["image_path"]).read_bytes())
        (folder / f"{n:05d}_mask.png").write_bytes((i3a_dir / row["mask_path"]).read_bytes())
    for n in range(20):
        (folder / f"zz-copy-{n:02d}.png").write_bytes((i3a_dir / rows[n]["image_path"]).read_bytes())
    (folder / "zz-broken-1.png").write_bytes(b"not an image at all")
    (folder / "zz-broken-2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    assert len(list(folder.iterdir())) == 1102

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors = []
    watch_for_errors(page, errors)
    uploads = []  # the files in each upload
    page.on(
        "request",
        lambda request: (
            uploads.append(zip_entries(request.post_data_buffer or b""))
            if request.method == "POST" and request.url.endswith(f"/api/projects/{project_id}/images")
            else None
        ),
    )
    held = []  # the second upload waits here until its progress is on screen

    def hold_the_second(route):
        if len(held) == 0 and len(uploads) == 2:
            held.append(route)
        else:
            route.continue_()

    page.route(f"**/api/projects/{project_id}/images", hold_the_second)
    sign_in(page, live_server, username, password)
    page.goto(f"{live_server}/admin.html?project={project_id}")
    page.wait_for_selector("#pool-count")
    record_status_texts(page)
    page.locator("#import-form input[name=folder]").set_input_files(str(folder))

    expect_text(page, "#import-status", "batch 2 of 4, sending", timeout=60_000)
    element_screenshot(page.locator("section[aria-labelledby=pool-title]"), "21-dashboard-import-progress")
    progress = page.inner_text("#import-status")
    assert "files sent" in progress and "/ 1,102" in progress, progress
    assert held, "the second upload was not held"
    held[0].continue_()

    expect_text(page, "#import-status", "Imported 540 images into the pool split", timeout=120_000)
    summary = page.inner_text("#import-status")
    assert "Sent the 1,102 files in 4 batches" in summary and "540 of them with a mask" in summary, summary
    counts = page.eval_on_selector_all(
        "#import-status dd[data-count]", "els => Object.fromEntries(els.map((e) => [e.dataset.count, e.textContent]))"
    )
    assert counts["imported"] == "540" and counts["duplicates"].startswith("20") and counts["invalid"] == "2", counts
    page.locator("#import-status details", has_text="invalid files").locator("summary").click()
    expect_text(page, "#import-status", "zz-broken-1.png")
    element_screenshot(page.locator("#import-status"), "22-dashboard-import-summary")
    texts = page.evaluate("window.__statusTexts")
    assert any("batch 1 of 4" in t for t in texts) and any("batch 4 of 4" in t for t in texts), texts

    assert len(uploads) == 4 and max(uploads) <= 300 and sum(uploads) == 1102, uploads
    images = api.get(f"/api/projects/{project_id}/images", params={"split": "pool", "limit": 1000}).json()
    assert images["total"] == 540
    assert [image["filename"] for image in images["items"] if not image["has_mask"]] == []
    assert not any("mask" in image["filename"] for image in images["items"])
    expect_text(page, "#pool-count", "of 540")
    assert errors == []
    context.close()
    api.close()


def test_a_folder_with_a_labels_csv_imports_in_batches_each_with_its_rows(
    live_server, browser, screenshot, i3a_dir, i3a_rows, tmp_path
):
    """A test split of 204 cells in class folders, listed with their masks in a labels.csv
    (409 files with the CSV and a stray notes file): two batches, each with its own rows."""
    _, admin_headers = make_user("admin")
    api = httpx.Client(base_url=live_server, headers=admin_headers, timeout=60)
    username, password = new_admin(api)
    project_id = new_project(api)
    folder = tmp_path / "test-split"
    rows = balanced_sample(i3a_rows, per_class=34, offset=300)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "pattern", "image_path", "mask_path"])
        for row in rows:
            for key in ("image_path", "mask_path"):
                (folder / row[key]).parent.mkdir(parents=True, exist_ok=True)
                (folder / row[key]).write_bytes((i3a_dir / row[key]).read_bytes())
            writer.writerow([row["image_id"], row["pattern"], row["image_path"], row["mask_path"]])
    (tmp_path / "labels.csv").rename(folder / "labels.csv")
    (folder / "notes.txt").write_text("scanned on the old microscope\n")

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors = []
    watch_for_errors(page, errors)
    sign_in(page, live_server, username, password)
    page.goto(f"{live_server}/admin.html?project={project_id}")
    page.wait_for_selector("#pool-count")
    record_status_texts(page)
    page.locator("#import-form select[name=split]").select_option("test")
    page.locator("#import-form input[name=folder]").set_input_files(str(folder))
    expect_text(page, "#import-status", "Imported 204 images into the test split", timeout=120_000)
    summary = page.inner_text("#import-status")
    assert "Sent 409 of the 410 files in 2 batches" in summary and "listed in labels.csv" in summary, summary
    assert "1 file not listed in labels.csv" in summary, summary
    assert any("batch 2 of 2" in t for t in page.evaluate("window.__statusTexts"))
    images = api.get(f"/api/projects/{project_id}/images", params={"split": "test", "limit": 1000}).json()["items"]
    assert len(images) == 204 and all(image["has_mask"] for image in images)
    truth = {row["image_id"]: row["pattern"] for row in rows}
    assert all(image["reference_class"] == truth[image["meta"]["image_id"]] for image in images)
    assert errors == []
    context.close()
    api.close()


# ---------------------------------------------------------------- rounds written as a worker stores them


def pool_of(api, project_id: int, i3a_dir, rows) -> list[int]:
    files = [
        ("files", (f"cell-{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes(), "image/png")) for row in rows
    ]
    assert api.post(f"/api/projects/{project_id}/images", files=files, data={"split": "pool"}).status_code == 201
    items = api.get(f"/api/projects/{project_id}/images", params={"split": "pool", "limit": 1000}).json()["items"]
    return [image["id"] for image in items]


def store(project_id: int, rounds: list[dict], labels: list[tuple], annotator: str) -> None:
    """Writes `rounds` ({number, state, n_labels, n_selected, started, picks: [(image id, score,
    details)], ...}: the first n_selected picks are the step, the rest its reserve) and `labels`
    ((image id, class position, round number, created)) as a worker and annotators would."""
    from backend.core.db.models import Label, Project, ProjectClass, Round, Selection, User, utcnow
    from backend.core.db.session import new_session

    with new_session() as session:
        project = session.get(Project, project_id)
        project.state = "active"
        user_id = session.scalar(select(User.id).where(User.username == annotator))
        classes = {
            c.position: c.id for c in session.scalars(select(ProjectClass).where(ProjectClass.project_id == project_id))
        }
        ids = {}
        for spec in rounds:
            round_ = Round(
                project_id=project_id,
                number=spec["number"],
                state=spec["state"],
                n_labels=spec.get("n_labels", 0),
                n_selected=spec.get("n_selected", 0),
                attempts=1,
                progress=spec.get("progress", {"phase": "done"}),
                timings=spec.get("timings", {}),
                metrics={},
                selection_summary=spec.get("summary", {}),
                diagnostics=spec.get("diagnostics", {}),
                created_at=spec["started"],
                started_at=spec["started"],
                finished_at=spec.get("finished"),
                lease_expires_at=utcnow() + timedelta(hours=1) if spec["state"] == "running" else None,
            )
            session.add(round_)
            session.flush()
            ids[spec["number"]] = round_.id
            labeled = {image_id for image_id, _, number, _ in labels if number == spec["number"]}
            for rank, (image_id, score, details) in enumerate(spec.get("picks", [])):
                session.add(
                    Selection(
                        round_id=round_.id,
                        image_id=image_id,
                        rank=rank,
                        score=score,
                        details=details,
                        labeled=image_id in labeled,
                    )
                )
            step = spec.get("picks", [])[: round_.n_selected]
            round_.open_cells = sum(1 for image_id, _, _ in step if image_id not in labeled)
        for image_id, position, number, created in labels:
            session.add(
                Label(
                    project_id=project_id,
                    image_id=image_id,
                    class_id=classes[position],
                    user_id=user_id,
                    round_id=ids[number],
                    created_at=created,
                )
            )
        session.commit()


def probabilities_for(predicted: int) -> list[float]:
    return [0.55 if i == predicted else 0.09 for i in range(len(CLASSES))]


def test_the_dashboard_counts_each_rounds_labels_truly_while_the_next_round_runs(
    live_server, browser, screenshot, i3a_dir, i3a_rows
):
    """Round 0 picked a step of 4 and a reserve of 2; all 6 were labeled (the reserve while
    round 1 ran). Round 1 picked 3 and a reserve of 2: its step and one reserve cell are
    labeled, the reserve one while round 2 runs now. Round 1's model had 2 of its 4 labeled
    picks wrong."""
    from backend.core.db.models import utcnow

    _, admin_headers = make_user("admin")
    api = httpx.Client(base_url=live_server, headers=admin_headers, timeout=60)
    username, password = new_admin(api)
    annotator, _ = make_user("annotator")
    project_id = new_project(api, strategy="entropy", initial_size=4, step_size=3)
    cells = pool_of(api, project_id, i3a_dir, balanced_sample(i3a_rows, per_class=2, offset=200))
    t = utcnow() - timedelta(hours=2)
    minutes = lambda n: t + timedelta(minutes=n)  # noqa: E731
    truth = {cell: i % len(CLASSES) for i, cell in enumerate(cells)}
    predicted = {cells[6]: truth[cells[6]], cells[7]: (truth[cells[7]] + 1) % 6, cells[8]: truth[cells[8]]}
    predicted |= {cells[9]: (truth[cells[9]] + 2) % 6, cells[10]: truth[cells[10]]}
    entropy_picks = [
        (cell, 1.5 - 0.1 * i, {"strategy": "entropy", "probabilities": probabilities_for(p), "predicted": p})
        for i, (cell, p) in enumerate(predicted.items())
    ]
    store(
        project_id,
        [
            {
                "number": 0,
                "state": "done",
                "n_selected": 4,
                "started": minutes(0),
                "finished": minutes(1),
                "picks": [(cell, 0.5, {"strategy": "random"}) for cell in cells[:6]],
            },
            {
                "number": 1,
                "state": "done",
                "n_labels": 4,
                "n_selected": 3,
                "started": minutes(10),
                "finished": minutes(15),
                "timings": {"train_s": 250.0, "score_s": 30.0, "total_s": 290.0},
                "summary": {"pool_expected_error": 0.31},
                "picks": entropy_picks,
                "diagnostics": {"n": 3, "errors": 1, "hit_rate": 1 / 3, "pool_expected_error": 0.31, "error_auroc": 0.5},
            },
            {
                "number": 2,
                "state": "running",
                "started": minutes(30),
                "progress": {"phase": "training", "epoch": 3, "max_epochs": 30},
            },
        ],
        [(cell, truth[cell], 0, minutes(5)) for cell in cells[:4]]
        + [(cell, truth[cell], 0, minutes(12)) for cell in cells[4:6]]  # round 0's reserve, while round 1 ran
        + [(cell, truth[cell], 1, minutes(20)) for cell in cells[6:9]]
        + [(cells[9], truth[cells[9]], 1, minutes(40))],  # round 1's reserve, while round 2 runs
        annotator,
    )

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors = []
    watch_for_errors(page, errors)
    sign_in(page, live_server, username, password)
    page.goto(f"{live_server}/admin.html?project={project_id}")
    page.wait_for_selector("#rounds tr[data-round='2'][data-state='running']")
    expect_text(page, "#budget", "10 / 20")
    steps = page.get_attribute("#budget svg.bar-chart", "aria-label")
    assert "round 0 4 / 4 + 2 reserve" in steps and "round 1 3 / 3 + 1 reserve" in steps, steps
    assert page.locator("#budget svg.bar-chart rect.extra").count() == 2  # the reserve, drawn after the step

    def cell(number: int, column: str) -> str:
        return page.inner_text(f"#rounds tr[data-round='{number}'] td.{column}")

    assert cell(2, "trained") == "9"  # the labels given before round 2 started, not 0
    assert cell(1, "trained") == "4" and cell(0, "trained") == "–"
    assert cell(0, "picked") == "4 + 2 reserve" and cell(1, "picked") == "3 + 2 reserve"
    assert cell(0, "labeled") == "4 / 4 + 2 reserve" and cell(1, "labeled") == "3 / 3 + 1 reserve"
    assert cell(1, "wrong") == "2 of 4 (50%)"  # the same 3 + 1 labeled picks
    assert cell(0, "wrong") == "–"  # round 0 had no model
    assert cell(2, "labeled") == "–"
    expect_text(page, "#diagnostics", "2 of 4 wrong")
    element_screenshot(page.locator("section[aria-labelledby=rounds-title]"), "23-dashboard-rounds-while-a-round-runs")
    element_screenshot(page.locator("section[aria-labelledby=budget-title]"), "24-dashboard-budget-per-step")
    element_screenshot(page.locator("section[aria-labelledby=diagnostics-title]"), "25-dashboard-diagnostics")
    page.set_viewport_size({"width": 820, "height": 1180})
    element_screenshot(page.locator("section[aria-labelledby=rounds-title]"), "26-dashboard-rounds-tablet")
    assert errors == []
    context.close()
    api.close()


XAL_CLASSES = ["Homogeneous", "coarse_speckled", "Nucleolar", "Centromere", "nuclear_membrane", "Golgi"]


def xal_entropy(distances: list[float]) -> float:
    shares = [d / sum(distances) for d in distances]
    return -sum(q * math.log(q) for q in shares)


@pytest.fixture(scope="module")
def xal_round(live_server, i3a_dir, i3a_rows):
    """An xal-entropy round as the issue saw it: every pick scored about ln 6, distances of
    1.2-1.4 to six centres, two of whose medoids are coarse_speckled cells; the classes have
    long names. Its annotator, who signs in through the UI."""
    from backend.core.db.models import utcnow

    _, admin_headers = make_user("admin")
    api = httpx.Client(base_url=live_server, headers=admin_headers, timeout=60)
    annotator, password = f"ui-why-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    user = api.post("/api/users", json={"username": annotator, "role": "annotator", "password": password}).json()
    project_id = new_project(api, classes=XAL_CLASSES, strategy="xal-entropy", initial_size=6, step_size=3)
    assert api.put(f"/api/projects/{project_id}/members/{user['id']}").status_code == 204
    cells = pool_of(api, project_id, i3a_dir, balanced_sample(i3a_rows, per_class=2, offset=250))
    api.close()
    medoid_classes = [0, 1, 2, 3, 1, 5]  # centres 2 and 5 both have a coarse_speckled medoid
    medoids = [
        {"centre": k, "labeled_index": k, "class": c, "image_id": cells[k], "class_name": XAL_CLASSES[c]}
        for k, c in enumerate(medoid_classes)
    ]
    distances = [1.31, 1.22, 1.40, 1.27, 1.24, 1.35]
    details = {
        "strategy": "xal-entropy",
        "representation": "concept",
        "centres": "clusters",
        "relevance_method": "deeptaylor",
        "distances": distances,
        "nearest": [{**medoids[k], "distance": distances[k]} for k in (1, 4, 3)],
        "predicted": 1,
        "probabilities": [0.08, 0.46, 0.1, 0.2, 0.08, 0.08],
        "top_channels": [{"channel": 63, "share": 0.1}, {"channel": 12, "share": 0.07}],
    }
    score = xal_entropy(distances)
    t = utcnow() - timedelta(hours=1)
    store(
        project_id,
        [
            {
                "number": 0,
                "state": "done",
                "n_selected": 6,
                "started": t,
                "finished": t,
                "picks": [(cell, 0.5, {"strategy": "random"}) for cell in cells[:6]],
            },
            {
                "number": 1,
                "state": "done",
                "n_labels": 6,
                "n_selected": 3,
                "started": t + timedelta(minutes=5),
                "finished": t + timedelta(minutes=9),
                "summary": {"strategy": "xal-entropy", "n_centres": 6, "centre_medoids": medoids},
                "picks": [(cell, score - 0.001 * i, details) for i, cell in enumerate(cells[6:9])],
            },
        ],
        [(cell, medoid_classes[i], 0, t + timedelta(minutes=2)) for i, cell in enumerate(cells[:6])],
        annotator,
    )
    return {"url": live_server, "id": project_id, "user": (annotator, password), "score": score}


def labeling_page(browser, xal_round, errors: list):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    watch_for_errors(page, errors)
    sign_in(page, xal_round["url"], *xal_round["user"])
    page.goto(f"{xal_round['url']}/label.html?project={xal_round['id']}")
    return context, page


def test_why_this_cell_says_what_its_score_means_and_compares_the_nearest_examples(browser, screenshot, xal_round):
    errors = []
    context, page = labeling_page(browser, xal_round, errors)
    page.wait_for_selector("#why #why-distances svg")
    expect_text(page, "#why-distances", "Homogeneous")  # the round's summary named every centre

    # the score on its scale, with what it means
    score = xal_round["score"]
    meaning = page.inner_text("#why-score-meaning")
    fraction = f"{100 * score / math.log(6):.1f}%"
    assert f"{fraction} of perfectly even" in meaning and "ln 6 = 1.792" in meaning, meaning
    assert "equally far from all of them" in meaning
    assert page.locator("#why-score-meaning progress").count() == 1

    # the nearest labeled examples come first, told apart
    order = page.evaluate("""() => ['#why-nearest', '#why .bar-chart', '#why-distances']
        .map((s) => [...document.querySelectorAll('#why *')].indexOf(document.querySelector(s)))""")
    assert order[0] < order[1] < order[2], order
    captions = page.locator("#why-nearest figcaption").all_inner_texts()
    assert captions[0].startswith("coarse_speckled, centre 1") and "(nearest)" in captions[0], captions
    assert captions[1].startswith("coarse_speckled, centre 2"), captions

    # distances on a scale from the nearest to the farthest
    labels = page.locator("#why-distances text.label").all_text_contents()
    assert labels == [
        "Homogeneous",
        "coarse_speckled, centre 1",
        "Nucleolar",
        "Centromere",
        "coarse_speckled, centre 2",
        "Golgi",
    ]
    bars = page.eval_on_selector_all("#why-distances rect.bar", "els => els.map((e) => e.width.baseVal.value)")
    track = page.eval_on_selector("#why-distances rect.track", "e => e.width.baseVal.value")
    assert bars[1] < 0.1 * track and bars[2] == pytest.approx(track), (bars, track)  # nearest: a stub; farthest: full
    assert bars[4] < bars[3] < bars[0] < bars[5] < bars[2]

    # channels are technical: collapsed, in plain words
    assert not page.is_visible("text=channel 63")
    page.locator("#why-technical summary").click()
    expect_text(page, "#why-technical", "channel 63 (10% of the relevance)")
    assert "#63" not in page.inner_text("#why")
    screenshot(page, "27-label-why-this-cell-1280x800")
    page.set_viewport_size({"width": 1280, "height": 2000})  # the side panel grows: all of it on one screenshot
    element_screenshot(page.locator("#why").locator(".."), "28-label-why-this-cell-panel")
    page.set_viewport_size({"width": 820, "height": 1180})
    element_screenshot(page.locator("#why").locator(".."), "29-label-why-this-cell-panel-tablet")
    assert errors == []
    context.close()


def test_chart_labels_are_not_clipped_and_every_page_has_its_favicon(browser, xal_round):
    """The predicted class, coarse_speckled, is highlighted (bold) in the probability chart; and
    no page asks for a file the server does not have."""
    errors, missing = [], []
    context, page = labeling_page(browser, xal_round, errors)
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    page.wait_for_selector("#why svg.bar-chart text.label.strong")
    page.wait_for_function("document.querySelectorAll('#why svg.bar-chart').length === 2")  # probabilities, distances
    clipped = page.evaluate("""() => [...document.querySelectorAll('#why svg.bar-chart text.label')]
        .filter((t) => t.getBBox().x < 0).map((t) => t.textContent)""")
    assert clipped == [], clipped
    highlighted = page.locator("#why svg.bar-chart text.label.strong").all_text_contents()
    assert "coarse_speckled" in highlighted, highlighted
    element_screenshot(page.locator("#why svg.bar-chart").first, "30-label-probabilities-chart")

    for path in ("index.html", f"admin.html?project={xal_round['id']}", f"label.html?project={xal_round['id']}"):
        page.goto(f"{xal_round['url']}/{path}")
        page.wait_for_load_state("networkidle")
        icon = page.get_attribute("link[rel=icon]", "href")
        assert icon, f"{path} links no favicon"
        response = page.request.get(f"{xal_round['url']}/{icon}")
        assert response.status == 200 and response.headers["content-type"].startswith("image/svg+xml"), path
    assert missing == [], missing
    assert errors == []
    context.close()
