"""Bearer tokens on every route, and roles."""

import pytest
from sqlalchemy import select

from tests.conftest import make_user


def test_annotators_cannot_change_projects_and_clients_only_read(app_client, admin_headers):
    spec = {"name": "roles", "classes": [{"name": "a"}, {"name": "b"}]}
    created = app_client.post("/api/projects", headers=admin_headers, json=spec)
    assert created.status_code == 201
    project_id = created.json()["id"]
    _, annotator = make_user("annotator", project_ids=[project_id])
    _, client = make_user("client", project_ids=[project_id])
    assert app_client.post("/api/projects", headers=annotator, json={**spec, "name": "roles-2"}).status_code == 403
    assert app_client.post("/api/projects", headers=client, json={**spec, "name": "roles-2"}).status_code == 403
    assert app_client.get(f"/api/projects/{project_id}", headers=client).status_code == 200
    assert app_client.patch(f"/api/projects/{project_id}", headers=annotator, json={"budget": 5}).status_code == 403
    assert app_client.post(f"/api/projects/{project_id}/queue/next", headers=client).status_code == 403
    assert app_client.post("/api/users", headers=annotator, json={"username": "x", "role": "admin"}).status_code == 403


def test_login_issues_a_token_that_can_be_revoked(app_client, admin_headers):
    created = app_client.post(
        "/api/users",
        headers=admin_headers,
        json={"username": "pathologist", "role": "annotator", "password": "correct horse"},
    )
    assert created.status_code == 201
    assert app_client.post("/api/auth/token", json={"username": "pathologist", "password": "wrong"}).status_code == 401
    login = app_client.post("/api/auth/token", json={"username": "pathologist", "password": "correct horse"})
    assert login.status_code == 201
    headers = {"Authorization": f"Bearer {login.json()['token']}"}
    assert app_client.get("/api/me", headers=headers).json()["role"] == "annotator"
    assert app_client.delete(f"/api/tokens/{login.json()['id']}", headers=headers).status_code == 204
    assert app_client.get("/api/me", headers=headers).status_code == 401


def test_projects_reject_bad_settings_with_clear_messages(app_client, admin_headers):
    duplicate = app_client.post(
        "/api/projects", headers=admin_headers, json={"name": "dup-classes", "classes": [{"name": "a"}, {"name": "a"}]}
    )
    assert duplicate.status_code == 422 and "unique" in duplicate.json()["detail"]
    strategy = app_client.post(
        "/api/projects",
        headers=admin_headers,
        json={"name": "bad-strategy", "classes": [{"name": "a"}, {"name": "b"}], "strategy": "magic"},
    )
    assert strategy.status_code == 422 and "unknown selection strategy 'magic'" in strategy.json()["detail"]
    options = app_client.post(
        "/api/projects",
        headers=admin_headers,
        json={
            "name": "bad-options",
            "classes": [{"name": "a"}, {"name": "b"}],
            "strategy": "xal-margin",
            "strategy_options": {"representation": "voxels"},
        },
    )
    assert options.status_code == 422 and "representation: Input should be 'pixel' or 'concept'" in options.json()["detail"]
    softmax_options = app_client.post(
        "/api/projects",
        headers=admin_headers,
        json={
            "name": "entropy-options",
            "classes": [{"name": "a"}, {"name": "b"}],
            "strategy": "entropy",
            "strategy_options": {"centres": "classes"},
        },
    )
    assert softmax_options.status_code == 422 and "takes no options" in softmax_options.json()["detail"]
    keys = app_client.post(
        "/api/projects",
        headers=admin_headers,
        json={"name": "bad-keys", "classes": [{"name": "a", "key": "x"}, {"name": "b", "key": "x"}]},
    )
    assert keys.status_code == 422
    empty = app_client.post(
        "/api/projects", headers=admin_headers, json={"name": "empty", "classes": [{"name": "a"}, {"name": "b"}]}
    )
    assert app_client.post(f"/api/projects/{empty.json()['id']}/start", headers=admin_headers).status_code == 409
    assert app_client.get("/api/projects", headers=admin_headers).status_code == 200
    names = {p["name"] for p in app_client.get("/api/projects", headers=admin_headers).json()}
    assert not names & {"dup-classes", "bad-strategy", "bad-keys", "bad-options", "entropy-options"}


def test_a_null_in_a_project_update_changes_nothing(app_client, admin_headers):
    created = app_client.post(
        "/api/projects",
        headers=admin_headers,
        json={"name": "nulls", "classes": [{"name": "a"}, {"name": "b"}], "reveal_after_label": True},
    )
    project_id = created.json()["id"]
    response = app_client.patch(
        f"/api/projects/{project_id}",
        headers=admin_headers,
        json={"reveal_after_label": None, "description": None, "cold_start": None, "strategy": None},
    )
    assert response.status_code == 200
    assert response.json()["reveal_after_label"] is True and response.json()["strategy"] == "coverage-margin"


def test_a_tokens_last_use_is_noted_at_most_once_a_minute(app_client, service_env):
    from datetime import timedelta

    from backend.core.db.models import ApiToken
    from backend.core.db.session import new_session

    _, headers = make_user("client")
    secret = headers["Authorization"].removeprefix("Bearer ")

    from backend.services.users import _token_hash

    this_token = ApiToken.token_hash == _token_hash(secret)

    def last_used():
        with new_session() as session:
            return session.scalar(select(ApiToken.last_used_at).where(this_token))

    assert last_used() is None
    assert app_client.get("/api/me", headers=headers).status_code == 200
    first = last_used()
    assert first is not None
    assert app_client.get("/api/me", headers=headers).status_code == 200
    assert last_used() == first  # a second request within the minute writes nothing
    with new_session() as session:  # a minute later the next request notes it again
        token = session.scalar(select(ApiToken).where(this_token))
        token.last_used_at = first - timedelta(minutes=2)
        session.commit()
    assert app_client.get("/api/me", headers=headers).status_code == 200
    assert last_used() > first - timedelta(minutes=2)


def test_look_alike_user_names_are_one_name_or_refused(app_client, admin_headers, service_env):
    from sqlalchemy.exc import IntegrityError

    from backend.core.db.models import User
    from backend.core.db.session import new_session

    def create(username: str):
        return app_client.post(
            "/api/users", headers=admin_headers, json={"username": username, "role": "client", "password": "correct horse"}
        )

    created = create("  Ｌａｂ  Lead ")  # full-width letters and extra spaces: NFKC, trimmed, one space
    assert created.status_code == 201 and created.json()["username"] == "Lab Lead"
    for same in ("lab lead", "LAB LEAD", "Ｌａｂ Ｌｅａｄ"):
        taken = create(same)
        assert taken.status_code == 409 and "user 'Lab Lead' exists already" in taken.json()["detail"]
    for refused, fragment in (
        ("lab lead\u200b", "U+200B ZERO WIDTH SPACE"),
        ("\u202edael bal", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("lab\tlead", "U+0009"),
        ("lab\u3164lead", "HANGUL JUNGSEONG FILLER"),  # NFKC makes U+3164 U+1160, an old jamo
        ("   ", "is blank"),
    ):
        response = create(refused)
        assert response.status_code == 422 and fragment in response.json()["detail"], response.text
    # the user signs in however the name is cased
    signed_in = app_client.post("/api/auth/token", json={"username": "LAB LEAD", "password": "correct horse"})
    assert signed_in.status_code == 201 and signed_in.json()["username"] == "Lab Lead"
    # and the database holds one user per case-folded name, whoever writes it
    with new_session() as session:
        session.add(User(username="LAB LEAD", username_key="lab lead", role="client"))
        with pytest.raises(IntegrityError):
            session.flush()


def test_project_and_class_names_are_normalised_and_invisible_characters_refused(app_client, admin_headers):
    def create(name: str, classes: list[str]):
        return app_client.post(
            "/api/projects", headers=admin_headers, json={"name": name, "classes": [{"name": c} for c in classes]}
        )

    created = create("ＨＥｐ-2  names ", ["Ｇｏｌｇｉ", " NuMem "])
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "HEp-2 names"
    assert [c["name"] for c in created.json()["classes"]] == ["Golgi", "NuMem"]
    for name, classes, fragment in (
        ("names\u200b", ["a", "b"], "project name 'names\\u200b' holds U+200B ZERO WIDTH SPACE"),
        ("names-2", ["Golgi", "Nu\u202eMem"], "class name 'Nu\\u202eMem' holds U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("names-3", ["Golgi", "golgi"], "class names must be unique"),
        ("names-4", ["Golgi", " "], "class name ' ' is blank"),
    ):
        response = create(name, classes)
        assert response.status_code == 422 and fragment in response.json()["detail"], response.text


def test_a_sign_in_token_expires_signing_out_revokes_it_and_tokens_are_listed(app_client, admin_headers):
    from datetime import timedelta

    from backend.core.db.models import ApiToken, utcnow
    from backend.core.db.session import new_session
    from backend.core.settings import get_settings

    project = app_client.post(
        "/api/projects", headers=admin_headers, json={"name": "expiry", "classes": [{"name": "a"}, {"name": "b"}]}
    ).json()["id"]
    user = app_client.post(
        "/api/users", headers=admin_headers, json={"username": "expiring", "role": "annotator", "password": "pw pw pw"}
    ).json()
    assert app_client.put(f"/api/projects/{project}/members/{user['id']}", headers=admin_headers).status_code == 204

    def sign_in():
        login = app_client.post("/api/auth/token", json={"username": "expiring", "password": "pw pw pw"}).json()
        return login, {"Authorization": f"Bearer {login['token']}"}

    login, headers = sign_in()
    assert login["expires_at"] is not None
    with new_session() as session:
        expires_at = session.get(ApiToken, login["id"]).expires_at
    lifetime = expires_at - utcnow()
    assert (
        timedelta(hours=get_settings().signin_token_hours - 0.1)
        < lifetime
        <= timedelta(hours=get_settings().signin_token_hours)
    )
    assert app_client.post(f"/api/projects/{project}/queue/next", headers=headers).status_code == 409  # a draft: allowed in
    with new_session() as session:
        session.get(ApiToken, login["id"]).expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    assert app_client.get("/api/me", headers=headers).status_code == 401
    assert app_client.post(f"/api/projects/{project}/labels/undo", headers=headers).status_code == 401  # the hot path too

    login, headers = sign_in()
    assert app_client.post("/api/auth/signout", headers=headers).status_code == 204
    assert app_client.get("/api/me", headers=headers).status_code == 401

    client_token = app_client.post(f"/api/users/{user['id']}/tokens?name=scanner", headers=admin_headers).json()
    assert client_token["expires_at"] is None  # an API client's token lasts until revoked
    listed = app_client.get(f"/api/users/{user['id']}/tokens", headers=admin_headers).json()
    assert [t["name"] for t in listed] == ["scanner", "login", "login"]
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert listed[1]["revoked_at"] is not None and listed[0]["revoked_at"] is None
    own = app_client.get("/api/auth/tokens", headers={"Authorization": f"Bearer {client_token['token']}"}).json()
    assert [t["id"] for t in own] == [t["id"] for t in listed]
    assert (
        app_client.get(
            f"/api/users/{user['id']}/tokens", headers={"Authorization": f"Bearer {client_token['token']}"}
        ).status_code
        == 403
    )
    short = app_client.post(f"/api/users/{user['id']}/tokens?expires_in_days=2", headers=admin_headers).json()
    assert short["expires_at"] is not None
