"""The sign-in rate limit: failed attempts counted in the database per (user name, address), per
user name and per address; 429 with Retry-After, and a stranger's failures never lock a user out
of an address where they have none, or where the user signed in before.
Each test signs in from its own addresses and shrinks the limits through the settings; the
passing of time is played by moving the recorded attempts back in time."""

import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

# the per-user and per-address limits above the failures one address makes for one user here
LIMIT, USER_LIMIT, IP_LIMIT, WINDOW = 3, 8, 12, 600


@pytest.fixture
def limits(monkeypatch, service_env):
    from backend.core.settings import get_settings

    settings = get_settings()
    monkeypatch.setattr(settings, "login_max_failures", LIMIT)
    monkeypatch.setattr(settings, "login_max_failures_per_user", USER_LIMIT)
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


def detail(response) -> str:
    return response.json()["detail"]


def test_guessing_from_one_address_waits_twice_as_long_after_each_failure_beyond_the_free_ones(
    app_client, admin_headers, limits
):
    client = client_from_own_address(app_client)
    username, password = new_user(app_client, admin_headers)
    for _ in range(LIMIT):
        assert sign_in(client, username, "wrong password").status_code == 401
    for wait in (1, 2, 4, 8):
        blocked = sign_in(client, username, password)  # even the right password waits its turn here
        assert blocked.status_code == 429
        assert "too many failed sign-ins for this user name from this address" in detail(blocked)
        assert int(blocked.headers["Retry-After"]) == wait
        age_attempts(wait, username=username)  # the wait has passed: one more guess
        assert sign_in(client, username, "wrong password").status_code == 401
    assert attempts(username=username) == LIMIT + 4  # refused attempts are not recorded: waits end on time

    age_attempts(16, username=username)
    assert sign_in(client, username, password).status_code == 201  # a success starts the pair afresh
    assert [sign_in(client, username, "typo").status_code for _ in range(LIMIT + 1)] == [401] * LIMIT + [429]


def test_the_wait_never_exceeds_the_window(app_client, admin_headers, limits):
    from backend.core.db.models import LoginAttempt, utcnow
    from backend.core.db.session import new_session

    address = f"198.19.{uuid.uuid4().int % 250}.2"
    username, password = new_user(app_client, admin_headers)
    with new_session() as session:  # failures enough for a wait of 2 ** 10 s, ten times the window
        session.add_all(
            LoginAttempt(username=username, client_ip=address, succeeded=False, created_at=utcnow())
            for _ in range(LIMIT + 10)
        )
        session.commit()
    blocked = sign_in(client_from_own_address(app_client, address), username, password)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) == WINDOW


def test_failures_from_other_addresses_never_lock_a_user_out_of_a_clean_or_known_address(app_client, admin_headers, limits):
    username, password = new_user(app_client, admin_headers)
    home = client_from_own_address(app_client)
    assert sign_in(home, username, password).status_code == 201  # home is a known address now
    assert sign_in(home, username, "typo").status_code == 401
    attackers = [client_from_own_address(app_client) for _ in range(USER_LIMIT)]
    for attacker in attackers:  # guessing from many addresses, one guess each
        assert sign_in(attacker, username, "guess").status_code == 401

    # the guessers' addresses are refused, the right password included
    refused = sign_in(attackers[0], username, password)
    assert refused.status_code == 429
    assert "too many failed sign-ins for this user name, from this address among others" in detail(refused)
    assert 0 < int(refused.headers["Retry-After"]) <= WINDOW
    # a fresh address gets one guess
    newcomer = client_from_own_address(app_client)
    assert [sign_in(newcomer, username, "guess").status_code for _ in range(2)] == [401, 429]

    # the user signs in from any address without a failure, and from home despite its typo
    assert sign_in(client_from_own_address(app_client), username, password).status_code == 201
    assert sign_in(home, username, password).status_code == 201

    age_attempts(WINDOW, username=username, succeeded=False)
    assert sign_in(attackers[0], username, password).status_code == 201  # the window has passed


def test_unknown_user_names_are_counted_like_known_ones(app_client, limits):
    client = client_from_own_address(app_client)
    username = f"nobody-{uuid.uuid4().hex[:8]}"
    statuses = [sign_in(client, username, "guess").status_code for _ in range(LIMIT + 1)]
    assert statuses == [401] * LIMIT + [429]


def test_an_address_trying_many_user_names_is_refused_except_for_users_known_there(app_client, admin_headers, limits):
    address = f"198.19.{uuid.uuid4().int % 250}.1"
    office = client_from_own_address(app_client, address)
    regular, regular_password = new_user(app_client, admin_headers)
    assert sign_in(office, regular, regular_password).status_code == 201
    newcomer, newcomer_password = new_user(app_client, admin_headers)

    for _ in range(IP_LIMIT):  # one address, many user names
        assert sign_in(office, f"nobody-{uuid.uuid4().hex[:8]}", "guess").status_code == 401
    assert attempts(client_ip=address, succeeded=False) == IP_LIMIT

    blocked = sign_in(office, newcomer, newcomer_password)
    assert blocked.status_code == 429 and "too many failed sign-ins from this address" in detail(blocked)
    assert 0 < int(blocked.headers["Retry-After"]) <= WINDOW
    assert sign_in(office, regular, regular_password).status_code == 201  # signed in here before
    assert sign_in(client_from_own_address(app_client), newcomer, newcomer_password).status_code == 201


def test_user_names_are_counted_as_one_name_however_they_are_cased(app_client, admin_headers, limits):
    client = client_from_own_address(app_client)
    username, password = new_user(app_client, admin_headers)
    for typed in (username.upper(), username.title(), username):
        assert sign_in(client, typed, "wrong password").status_code == 401
    assert sign_in(client, username, password).status_code == 429
    assert attempts(username=username) == LIMIT


def test_a_revoked_token_is_refused(app_client, admin_headers):
    client = client_from_own_address(app_client)
    username, password = new_user(app_client, admin_headers)
    first, second = (sign_in(client, username, password).json() for _ in range(2))
    assert app_client.delete(f"/api/tokens/{first['id']}", headers=admin_headers).status_code == 204
    refused = app_client.get("/api/me", headers={"Authorization": f"Bearer {first['token']}"})
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert app_client.get("/api/me", headers={"Authorization": f"Bearer {second['token']}"}).status_code == 200
