"""Who may do what: every API route x every role, against a real project of I3A cells.

Roles: anonymous; an annotator and a client who are members of the project; an annotator of
another project (not a member: the project must not exist for them); an admin. A 422 from
request validation, a 409 from the project's state or a 404 for a missing relevance map or
token means the request passed the authorization checks (authorization runs before the body
is validated)."""

import io
import uuid
import zipfile

import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select

from tests.conftest import balanced_sample, make_user

ROLES = ("anonymous", "annotator", "client", "outsider", "admin")
P = "/api/projects/{project_id}"

# what each role gets:                              anonymous annotator client outsider admin
MATRIX = {
    "GET /api/health": (200, 200, 200, 200, 200),
    "GET /api/openapi.json": (200, 200, 200, 200, 200),
    "GET /api/docs": (200, 200, 200, 200, 200),
    "POST /api/auth/token": (422, 422, 422, 422, 422),
    "GET /api/me": (401, 200, 200, 200, 200),
    "GET /api/users": (401, 403, 403, 403, 200),
    "POST /api/users": (401, 403, 403, 403, 422),
    "POST /api/users/{user_id}/tokens": (401, 403, 403, 403, 201),
    "DELETE /api/tokens/{token_id}": (401, 404, 404, 404, 204),  # others' tokens: admins only
    "GET /api/users/{user_id}/tokens": (401, 403, 403, 403, 200),
    "GET /api/auth/tokens": (401, 200, 200, 200, 200),
    "POST /api/auth/signout": (401, 204, 204, 204, 204),  # revokes the caller's token: checked on its own below
    "GET /api/models": (401, 200, 200, 200, 200),
    "GET /api/strategies": (401, 200, 200, 200, 200),
    "POST /api/projects": (401, 403, 403, 403, 422),
    "GET /api/projects": (401, 200, 200, 200, 200),
    f"GET {P}": (401, 200, 200, 404, 200),
    f"PATCH {P}": (401, 403, 403, 404, 422),
    f"POST {P}/start": (401, 403, 403, 404, 409),
    f"GET {P}/progress": (401, 200, 200, 404, 200),
    f"GET {P}/members": (401, 403, 403, 404, 200),
    f"PUT {P}/members/{{user_id}}": (401, 403, 403, 404, 204),
    f"DELETE {P}/members/{{user_id}}": (401, 403, 403, 404, 204),
    f"POST {P}/images": (401, 403, 403, 404, 422),
    f"GET {P}/images": (401, 200, 200, 404, 200),
    f"GET {P}/images/{{image_id}}": (401, 200, 200, 404, 200),
    f"GET {P}/images/{{image_id}}/file": (401, 200, 200, 404, 200),
    f"GET {P}/images/{{image_id}}/mask": (401, 200, 200, 404, 200),
    f"GET {P}/images/{{image_id}}/maps": (401, 200, 200, 404, 200),
    f"GET {P}/images/{{image_id}}/maps/{{map_id}}.{{kind}}": (401, 404, 404, 404, 404),  # round 0 draws no maps
    f"GET {P}/queue": (401, 200, 200, 404, 200),
    f"POST {P}/queue/next": (401, 200, 403, 404, 200),
    f"POST {P}/labels": (401, 422, 403, 404, 422),
    f"POST {P}/queue/skip": (401, 422, 403, 404, 422),
    f"POST {P}/labels/undo": (401, 409, 403, 404, 409),  # no label of theirs yet
    f"GET {P}/labels/export": (401, 200, 200, 404, 200),
    f"GET {P}/stats": (401, 403, 403, 404, 200),
    f"GET {P}/rounds": (401, 200, 200, 404, 200),
    f"GET {P}/rounds/{{number}}": (401, 200, 200, 404, 200),
    f"GET {P}/rounds/{{number}}/selections": (401, 200, 200, 404, 200),
    f"POST {P}/rounds/retry": (401, 403, 403, 404, 409),  # round 0 is done
    f"POST {P}/rounds/cancel": (401, 403, 403, 404, 409),
    f"POST {P}/clustering": (401, 403, 403, 404, 422),
    f"GET {P}/clustering": (401, 200, 200, 404, 200),
}

# bodies that fail validation, so that a write route's "allowed" is a 422 that changes nothing
INVALID_BODIES = {
    "POST /api/auth/token": {},
    "POST /api/users": {},
    "POST /api/projects": {},
    f"PATCH {P}": {"budget": 0},
    f"POST {P}/labels": {},
    f"POST {P}/queue/skip": {},
    f"POST {P}/clustering": {"case": 9},
}

CLASSES = ["Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi"]


def api_routes(app) -> set[str]:
    """ "METHOD path" of every route under /api, included routers expanded."""
    return {
        f"{method} {context.path}"
        for context in iter_route_contexts(app.routes)
        if (context.path or "").startswith("/api")
        for method in (context.methods or set()) - {"HEAD"}
    }


@pytest.fixture(scope="module")
def authz_project(app_client, admin_headers, i3a_dir, i3a_rows):
    """A started project of 12 pool cells (with masks) and 6 test cells whose round 0 queued
    6 cells; its members; an outsider; a bystander user with a token to act on."""
    from backend.core.db.models import Round, User
    from backend.core.db.session import new_session
    from backend.services.users import issue_token
    from worker.round_job import run_round

    created = app_client.post(
        "/api/projects",
        headers=admin_headers,
        json={
            "name": f"authz-{uuid.uuid4().hex[:6]}",
            "classes": [{"name": c} for c in CLASSES],
            "budget": 12,
            "initial_size": 6,
            "step_size": 6,
        },
    )
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    pool, test = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(pool, "w") as archive:
        for row in balanced_sample(i3a_rows, per_class=2, offset=300):
            archive.writestr(f"{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes())
            archive.writestr(f"{row['image_id']}_mask.png", (i3a_dir / row["mask_path"]).read_bytes())
    with zipfile.ZipFile(test, "w") as archive:
        for row in balanced_sample(i3a_rows, per_class=1, offset=302):
            archive.writestr(f"{row['pattern']}/{row['image_id']}.png", (i3a_dir / row["image_path"]).read_bytes())
    image_ids = {}
    for split, archive in (("pool", pool), ("test", test)):
        uploaded = app_client.post(
            f"/api/projects/{project_id}/images",
            headers=admin_headers,
            data={"split": split},
            files=[("files", (f"{split}.zip", archive.getvalue(), "application/zip"))],
        )
        assert uploaded.status_code == 201, uploaded.text
        image_ids[split] = uploaded.json()["image_ids"]
    assert app_client.post(f"/api/projects/{project_id}/start", headers=admin_headers).status_code == 202
    with new_session() as session:
        round_id = session.scalar(select(Round.id).where(Round.project_id == project_id, Round.number == 0))
    assert run_round(round_id) in ("done", "skipped")  # a test-session worker may have been faster

    bystander_name, _ = make_user("client")
    with new_session() as session:
        bystander = session.scalar(select(User).where(User.username == bystander_name))
        token, _ = issue_token(session, bystander, "to be revoked")
        session.commit()
        bystander_id, token_id = bystander.id, token.id
    return {
        "project_id": project_id,
        "headers": {
            "anonymous": {},
            "annotator": make_user("annotator", project_ids=[project_id])[1],
            "client": make_user("client", project_ids=[project_id])[1],
            "outsider": make_user("annotator")[1],
            "admin": admin_headers,
        },
        "values": {
            "project_id": project_id,
            "user_id": bystander_id,
            "token_id": token_id,
            "image_id": image_ids["pool"][0],
            "number": 0,
            "map_id": 1,
            "kind": "png",
        },
    }


SELF_REVOKING = {"POST /api/auth/signout"}


def test_signing_out_answers_each_role_as_the_matrix_says_with_tokens_of_its_own(app_client, authz_project):
    """Run with throwaway tokens: signing out revokes the token it is sent with."""
    from backend.core.db.models import User
    from backend.core.db.session import new_session
    from backend.services.users import issue_token

    expected = dict(zip(ROLES, MATRIX["POST /api/auth/signout"]))
    assert app_client.post("/api/auth/signout").status_code == expected["anonymous"]
    for role in ROLES[1:]:
        me = app_client.get("/api/me", headers=authz_project["headers"][role]).json()
        with new_session() as session:
            _, secret = issue_token(session, session.get(User, me["id"]))
            session.commit()
        headers = {"Authorization": f"Bearer {secret}"}
        assert app_client.post("/api/auth/signout", headers=headers).status_code == expected[role]
        assert app_client.get("/api/me", headers=headers).status_code == 401


def test_every_api_route_has_a_row_in_the_matrix(app_client):
    routes = api_routes(app_client.app)
    assert routes - MATRIX.keys() == set(), "routes without a row in MATRIX: give each role's expected status"
    assert MATRIX.keys() - routes == set(), "rows of MATRIX for routes that no longer exist"


def test_every_route_answers_each_role_as_the_matrix_says(app_client, authz_project):
    hidden = f"no project {authz_project['project_id']}"
    wrong = []
    for route, expected in MATRIX.items():
        if route in SELF_REVOKING:
            continue
        method, template = route.split(" ")
        path = template.format(**authz_project["values"])
        for role, status in zip(ROLES, expected):
            response = app_client.request(
                method, path, headers=authz_project["headers"][role], json=INVALID_BODIES.get(route)
            )
            detail = response.json().get("detail") if response.status_code >= 400 else None
            # a project hides itself from non-members, and only from them
            hides = response.status_code == 404 and detail == hidden
            if response.status_code != status or hides != (role == "outsider" and "{project_id}" in template):
                wrong.append(f"{route} as {role}: {response.status_code} {detail!r}, expected {status}")
    assert wrong == [], "\n".join(wrong)


def test_the_project_list_holds_only_ones_own_projects(app_client, admin_headers, authz_project):
    project_id = authz_project["project_id"]
    headers = authz_project["headers"]

    def listed(role):
        response = app_client.get("/api/projects", headers=headers[role])
        assert response.status_code == 200
        return {p["id"] for p in response.json()}

    assert project_id in listed("annotator") and project_id in listed("client") and project_id in listed("admin")
    assert project_id not in listed("outsider")
    models = app_client.get("/api/models", headers=headers["outsider"], params={"project_id": project_id})
    assert models.status_code == 404 and models.json()["detail"] == f"no project {project_id}"


def test_membership_is_given_and_taken_by_admins_and_takes_effect_at_once(app_client, admin_headers, authz_project):
    project_id = authz_project["project_id"]
    name, headers = make_user("annotator")
    me = app_client.get("/api/me", headers=headers).json()
    members = f"/api/projects/{project_id}/members"
    assert app_client.get(f"/api/projects/{project_id}", headers=headers).status_code == 404

    for _ in range(2):  # idempotent
        assert app_client.put(f"{members}/{me['id']}", headers=admin_headers).status_code == 204
    listed = app_client.get(members, headers=admin_headers).json()
    assert [m["username"] for m in listed].count(name) == 1
    assert app_client.get(f"/api/projects/{project_id}", headers=headers).status_code == 200
    assert app_client.post(f"/api/projects/{project_id}/queue/next", headers=headers).status_code == 200

    for _ in range(2):
        assert app_client.delete(f"{members}/{me['id']}", headers=admin_headers).status_code == 204
    assert name not in {m["username"] for m in app_client.get(members, headers=admin_headers).json()}
    assert app_client.get(f"/api/projects/{project_id}", headers=headers).status_code == 404

    unknown_user = app_client.put(f"{members}/999999", headers=admin_headers)
    assert unknown_user.status_code == 404 and unknown_user.json()["detail"] == "no user 999999"
    unknown_project = app_client.put(f"/api/projects/999999/members/{me['id']}", headers=admin_headers)
    assert unknown_project.status_code == 404 and unknown_project.json()["detail"] == "no project 999999"


def test_memberships_go_with_their_user_or_project(db):
    from backend.core.db.models import Project, ProjectClass, ProjectMember
    from backend.services.members import add_member
    from backend.services.users import create_user

    projects = [
        Project(
            name=f"cascade-{uuid.uuid4().hex[:6]}",
            classes=[ProjectClass(name=c, key=str(i + 1), position=i) for i, c in enumerate("ab")],
        )
        for _ in range(2)
    ]
    users = [create_user(db, f"cascade-{uuid.uuid4().hex[:6]}", "annotator") for _ in range(2)]
    db.add_all(projects)
    db.flush()
    for project in projects:
        for user in users:
            add_member(db, project, user.id)
    db.commit()
    db.delete(users[0])
    db.delete(projects[0])
    db.commit()
    left = db.execute(
        select(ProjectMember.project_id, ProjectMember.user_id).where(ProjectMember.project_id.in_([p.id for p in projects]))
    ).all()
    assert left == [(projects[1].id, users[1].id)]


def test_create_user_on_the_command_line_makes_a_member(app_client, admin_headers, authz_project, capsys):
    from backend.cli import main

    project_id = authz_project["project_id"]
    project_name = app_client.get(f"/api/projects/{project_id}", headers=admin_headers).json()["name"]
    name = f"cli-{uuid.uuid4().hex[:6]}"
    main(["create-user", name, "--role", "client", "--project", project_name])
    token = capsys.readouterr().out.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    assert [p["id"] for p in app_client.get("/api/projects", headers=headers).json()] == [project_id]

    with pytest.raises(SystemExit, match="no project 'no-such-project'"):
        main(
            ["create-user", f"{name}-2", "--role", "annotator", "--project", str(project_id), "--project", "no-such-project"]
        )
    users = {u["username"] for u in app_client.get("/api/users", headers=admin_headers).json()}
    assert name in users and f"{name}-2" not in users  # all projects found, or no user at all
