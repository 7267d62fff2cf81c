"""The sign-in rate limit: failed attempts counted in the database per user name and per
client address; 429 with Retry-After until the window has passed, even for the right password.
Each test signs in from its own address and shrinks the limits through the settings; the
passing of the window is played by moving the recorded attempts back in time."""

import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

LIMIT, IP_LIMIT, WINDOW = 3, 5, 600


@pytest.fixture
def limits(monkeypatch, service_env):
    from backend.core.settings import get_settings

    settings = get_settings()
    monkeypatch.setattr(settings, "login_max_failures", LIMIT)
    monkeypatch.setattr(settings, "login_max_failures_per_ip", IP_LIMIT)
    monkeypatch.setattr(settings, "login_window_seconds", WINDOW)
    return settings


def client_from_own_address(app_client, address: str | None = None) -> TestClient:
    """A client whose requests come from an address no other test uses (198.18.0.0/15 is for tests)."""
    suffix = uuid.uuid4().int
    address = address or f"198.18.{suffix % 250}.{suffix // 250 % 250 + 1}"
    return TestClient(app_client.app, client=(address, 50000))


def new_user(app_client, admin_headers) -> tuple[str, str]:
    username, password = f"rate-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    created = app_client.post(
        "/api/users", headers=admin_headers, json={"username": username, "role": "annotator", "password": password}
    )
    assert created.status_code == 201
    return username, password


def sign_in(client, username, password):
    return client.post("/api/auth/token", json={"username": username, "password": password})


def attempts(**where) -> int:
    from backend.core.db.models import LoginAttempt
    from backend.core.db.session import new_session

    with new_session() as session:
        return session.scalar(select(func.count(LoginAttempt.id)).filter_by(**where))


def age_attempts(seconds: int, **where) -> None:
    """Moves the matching recorded attempts `seconds` into the past."""
    from backend.core.db.models import LoginAttempt
    from backend.core.db.session import new_session

    with new_session() as session:
        session.execute(
            update(LoginAttempt).filter_by(**where).values(created_at=LoginAttempt.created_at - timedelta(seconds=seconds))
        )
        session.commit()


def test_a_user_name_is_refused_after_too_many_failures_even_with_the_right_password(app_client, admin_headers, limits):
    client = client_from_own_address(app_client)
    username, password = new_user(app_client, admin_headers)
    for _ in range(LIMIT):
        assert sign_in(client, username, "wrong password").status_code == 401
    blocked = sign_in(client, username, password)
    assert blocked.status_code == 429
    assert "too many failed sign-ins for this user name" in blocked.json()["detail"]
    assert 0 < int(blocked.headers["Retry-After"]) <= WINDOW
    assert attempts(username=username) == LIMIT  # a refused attempt is not recorded: the window ends on time
    # another user name from the same address is not affected
    other, other_password = new_user(app_client, admin_headers)
    assert sign_in(client, other, other_password).status_code == 201

    age_attempts(WINDOW - 10, username=username)
    still = sign_in(client, username, password)
    assert still.status_code == 429 and int(still.headers["Retry-After"]) <= 10
    age_attempts(11, username=username)  # the window has passed
    assert sign_in(client, username, password).status_code == 201
    assert attempts(username=username) == 1  # attempts older than the window were cleared away


def test_unknown_user_names_are_counted_like_known_ones(app_client, limits):
    client = client_from_own_address(app_client)
    username = f"nobody-{uuid.uuid4().hex[:8]}"
    statuses = [sign_in(client, username, "guess").status_code for _ in range(LIMIT + 1)]
    assert statuses == [401] * LIMIT + [429]


def test_a_success_clears_the_user_names_failures_but_not_the_addresss(app_client, admin_headers, limits):
    address = f"198.19.{uuid.uuid4().int % 250}.1"
    client = client_from_own_address(app_client, address)
    username, password = new_user(app_client, admin_headers)
    for _ in range(2):  # LIMIT - 1 failures, then the right password: the user name starts afresh
        assert [sign_in(client, username, "typo").status_code for _ in range(LIMIT - 1)] == [401] * (LIMIT - 1)
        assert sign_in(client, username, password).status_code == 201
    assert attempts(client_ip=address, succeeded=False) == 2 * (LIMIT - 1)

    stranger = f"nobody-{uuid.uuid4().hex[:8]}"
    assert sign_in(client, stranger, "guess").status_code == 401  # the address's 5th failure
    blocked = sign_in(client, username, password)
    assert blocked.status_code == 429 and "from this address" in blocked.json()["detail"]
    assert int(blocked.headers["Retry-After"]) > 0
    # the same user from elsewhere signs in
    assert sign_in(client_from_own_address(app_client), username, password).status_code == 201


def test_a_revoked_token_is_refused(app_client, admin_headers):
    client = client_from_own_address(app_client)
    username, password = new_user(app_client, admin_headers)
    first, second = (sign_in(client, username, password).json() for _ in range(2))
    assert app_client.delete(f"/api/tokens/{first['id']}", headers=admin_headers).status_code == 204
    refused = app_client.get("/api/me", headers={"Authorization": f"Bearer {first['token']}"})
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert app_client.get("/api/me", headers={"Authorization": f"Bearer {second['token']}"}).status_code == 200
