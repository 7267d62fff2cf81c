"""The labeling hot path on PostgreSQL: `queue/next`, `labels` (a label that leases the next
cell too), `labels/undo` and `queue/skip` each send one statement (one round trip) once the
caller's access is known, planned once per connection, and a revoked token or a removed member
is refused at once although an allowed caller's access is remembered for a while."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from sqlalchemy import Engine, event, select, text

from tests.conftest import make_user


@contextmanager
def statements_sent() -> list[str]:
    """The SQL statements every engine of this process sends while inside (the API runs in it)."""
    sent: list[str] = []

    def record(_conn, _cursor, statement, *_):
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_each_labeling_request_is_one_statement(app_client, open_project):
    client, project = app_client, open_project
    _, headers = make_user("annotator", project_ids=[project])
    warm = client.post(f"/api/projects/{project}/queue/next", headers=headers).json()["cell"]  # access read here
    truth = {"image_id": warm["image_id"], "class_name": "Golgi"}
    assert client.post(f"/api/projects/{project}/labels", headers=headers, json=truth).status_code == 201

    with statements_sent() as sent:
        cell = client.post(f"/api/projects/{project}/queue/next", headers=headers).json()["cell"]
    assert cell is not None and len(sent) == 1, sent
    with statements_sent() as sent:
        skipped = client.post(f"/api/projects/{project}/queue/skip", headers=headers, json={"image_id": cell["image_id"]})
    assert skipped.status_code == 200 and len(sent) == 1, sent
    cell = client.post(f"/api/projects/{project}/queue/next", headers=headers).json()["cell"]
    with statements_sent() as sent:
        label = client.post(
            f"/api/projects/{project}/labels", headers=headers, json={"image_id": cell["image_id"], "class_name": "Golgi"}
        )
    assert label.status_code == 201 and len(sent) == 1, sent
    cell = client.post(f"/api/projects/{project}/queue/next", headers=headers).json()["cell"]
    with statements_sent() as sent:
        label = client.post(
            f"/api/projects/{project}/labels",
            headers=headers,
            json={"image_id": cell["image_id"], "class_name": "Golgi", "lease_next": True},
        )
    assert label.status_code == 201 and label.json()["next"]["cell"] is not None and len(sent) == 1, sent
    with statements_sent() as sent:
        undone = client.post(f"/api/projects/{project}/labels/undo", headers=headers)
    assert undone.status_code == 200 and undone.json()["image_id"] == cell["image_id"] and len(sent) == 1, sent
    assert undone.json()["retracted_at"] is not None


def _on_the_async_engine(work):
    """`await work(engine)` on this process's async engine, in an event loop of its own (the
    browser tests' Playwright keeps one running in this thread); the engine is disposed after."""
    from backend.core.db.session import get_async_engine

    async def run():
        engine = get_async_engine()
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, run()).result()


def test_a_connection_plans_the_hot_paths_statement_once(app_client, open_project):
    """PostgreSQL keeps one generic plan of the prepared statement instead of planning it again
    at every call, which it may otherwise choose to do from the sixth call on, and which costs
    more than running it (bench/README.md, "PostgreSQL's high mode")."""
    from backend.services import annotating

    _, headers = make_user("annotator", project_ids=[open_project])
    secret = headers["Authorization"].split()[1]

    async def plans_after_eight_calls(engine) -> tuple[int, int]:
        for _ in range(8):  # one connection, as the calls take turns
            assert (await annotating.next_cell(secret, open_project)).cell is not None
        async with engine.connect() as connection:
            return (
                await connection.execute(
                    text(
                        "SELECT sum(generic_plans)::int, sum(custom_plans)::int FROM pg_prepared_statements"
                        " WHERE statement LIKE '%SKIP LOCKED%' AND statement NOT LIKE '%pg_prepared_statements%'"
                    )
                )
            ).one()

    assert tuple(_on_the_async_engine(plans_after_eight_calls)) == (8, 0)


def test_the_hot_paths_connections_find_rows_by_index_in_a_table_that_looks_empty(app_client):
    """A plan made while a table looks empty (a new database before autovacuum's first ANALYZE)
    would scan it, and a connection keeps its plan: the label statement then read every label
    for each label, until the next ANALYZE (bench/README.md, session 13). An empty, analyzed
    table of this connection's own stands for the labels of a new database."""

    async def plan(engine) -> str:
        async with engine.connect() as connection:
            await connection.execute(text("CREATE TEMP TABLE fresh_labels (id int PRIMARY KEY, image_id int)"))
            await connection.execute(text("CREATE INDEX ON fresh_labels (image_id)"))
            await connection.execute(text("ANALYZE fresh_labels"))
            rows = await connection.execute(text("EXPLAIN SELECT id FROM fresh_labels WHERE image_id = 1"))
            return "\n".join(row[0] for row in rows)

    found = _on_the_async_engine(plan)
    assert "Index" in found and "Seq Scan" not in found, found


def test_a_revoked_token_and_a_removed_member_are_refused_at_once(app_client, admin_headers, open_project):
    from backend.core.db.models import ApiToken
    from backend.core.db.session import new_session

    client, project = app_client, open_project
    name, headers = make_user("annotator", project_ids=[project])
    assert client.post(f"/api/projects/{project}/queue/next", headers=headers).status_code == 200  # access cached
    user_id = next(u["id"] for u in client.get("/api/users", headers=admin_headers).json() if u["username"] == name)

    assert client.delete(f"/api/projects/{project}/members/{user_id}", headers=admin_headers).status_code == 204
    assert client.post(f"/api/projects/{project}/queue/next", headers=headers).status_code == 404
    assert (
        client.post(
            f"/api/projects/{project}/labels", headers=headers, json={"image_id": 1, "class_name": "Golgi"}
        ).status_code
        == 404
    )

    assert client.put(f"/api/projects/{project}/members/{user_id}", headers=admin_headers).status_code == 204
    assert client.post(f"/api/projects/{project}/queue/next", headers=headers).status_code == 200
    with new_session() as session:
        tokens = session.scalars(select(ApiToken.id).where(ApiToken.user_id == user_id)).all()
    for token_id in tokens:
        assert client.delete(f"/api/tokens/{token_id}", headers=admin_headers).status_code == 204
    assert client.post(f"/api/projects/{project}/queue/next", headers=headers).status_code == 401
    assert client.post(f"/api/projects/{project}/labels/undo", headers=headers).status_code == 401


def test_the_access_check_notes_the_tokens_last_use(app_client, open_project):
    """The four statements leave the token's last use to the access check, which reads an
    allowed caller's access at most every ACCESS_CACHE_S seconds per token and project: it is
    noted on the first labeling request and again once older than a minute."""
    from datetime import timedelta

    from backend.core.db.models import ApiToken
    from backend.core.db.session import new_session
    from backend.services import annotating

    _, headers = make_user("annotator", project_ids=[open_project])
    this_token = ApiToken.token_hash == annotating.token_hash(headers["Authorization"].split()[1])

    def last_used():
        with new_session() as session:
            return session.scalar(select(ApiToken.last_used_at).where(this_token))

    assert last_used() is None
    assert app_client.post(f"/api/projects/{open_project}/queue/next", headers=headers).status_code == 200
    first = last_used()
    assert first is not None
    with new_session() as session:
        session.scalar(select(ApiToken).where(this_token)).last_used_at = first - timedelta(minutes=2)
        session.commit()
    annotating._access.clear()  # as if ACCESS_CACHE_S had passed
    assert app_client.post(f"/api/projects/{open_project}/queue/next", headers=headers).status_code == 200
    assert last_used() >= first


def test_the_statements_result_columns_are_declared_in_the_order_they_are_selected(app_client):
    """annotating._statement declares the result columns by position (SQLAlchemy then matches
    them once per statement, not at every call): a declaration out of order would give a column
    another's type."""
    from backend.core.db.models import utcnow
    from backend.services import annotating

    now = utcnow()
    params = dict(token_hash="no such token", project_id=1, image_id=1, now=now, expires=now)
    label = dict(class_name="Golgi", duration_ms=None, after_reveal=False)
    statements = {
        annotating.NEXT: params,
        annotating.LABEL: {**params, **label},
        annotating.LABEL_THEN_NEXT: {**params, **label},
        annotating.UNDO: params,
        annotating.SKIP: {**params, "kind": "skip", "note": ""},
    }

    async def names(engine) -> list[tuple[list[str], list[str]]]:
        async with engine.connect() as connection:
            pairs = []
            for statement, values in statements.items():
                result = await connection.execute(statement, values)
                pairs.append(([d[0] for d in result.cursor.description], list(statement.selected_columns.keys())))
                result.close()
            return pairs

    for selected, declared in _on_the_async_engine(names):
        assert selected == declared


def test_a_member_added_after_a_refusal_is_let_in_at_once(app_client, admin_headers, open_project):
    """A refusal is not remembered: the caller's next request reads their access again."""
    client, project = app_client, open_project
    name, headers = make_user("annotator")
    assert client.post(f"/api/projects/{project}/queue/next", headers=headers).status_code == 404
    user_id = next(u["id"] for u in client.get("/api/users", headers=admin_headers).json() if u["username"] == name)
    assert client.put(f"/api/projects/{project}/members/{user_id}", headers=admin_headers).status_code == 204
    assert client.post(f"/api/projects/{project}/queue/next", headers=headers).status_code == 200
