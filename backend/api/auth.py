"""Users and API tokens."""

from datetime import timedelta

from fastapi import APIRouter, HTTPException, Query, Request, status
from sqlalchemy import select

from backend.api.deps import Admin, AnyUser, BearerCredentials, SessionDep
from backend.core.db.models import User
from backend.core.settings import get_settings
from backend.schemas import LoginIn, TokenInfo, TokenOut, UserCreate, UserOut
from backend.services import users

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/token",
    response_model=TokenOut,
    status_code=201,
    responses={429: {"description": "too many failed sign-ins; see the Retry-After header"}},
)
def login(body: LoginIn, request: Request, session: SessionDep):
    """Exchanges a username and password for a new bearer token. Failed sign-ins slow down
    guessing per user name and client address, without locking a user out of an address
    it has no failures at (XAL_LOGIN_*; README, "Users, projects and access")."""
    client_ip = request.client.host if request.client else "unknown"
    block = users.login_blocked_for(session, body.username, client_ip)
    if block is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{block.reason}; sign-in is refused, even with the right password, "
            f"for {block.retry_after_seconds} more seconds",
            headers={"Retry-After": str(block.retry_after_seconds)},
        )
    user = users.login(session, body.username, body.password, client_ip)
    session.commit()
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
    lifetime = timedelta(hours=get_settings().signin_token_hours)
    token, secret = users.issue_token(session, user, name="login", lifetime=lifetime)
    session.commit()
    return TokenOut(id=token.id, token=secret, username=user.username, role=user.role, expires_at=token.expires_at)


@router.post("/auth/signout", status_code=204)
def sign_out(session: SessionDep, _user: AnyUser, credentials: BearerCredentials):
    """Revokes the token this request carries (the page's Sign out)."""
    assert credentials is not None  # AnyUser answered 401 without one
    users.revoke_secret(session, credentials.credentials)
    session.commit()


@router.get("/auth/tokens", response_model=list[TokenInfo])
def my_tokens(session: SessionDep, user: AnyUser):
    """The caller's tokens, revoked and expired ones included."""
    return users.tokens_of(session, user.id)


@router.get("/me", response_model=UserOut)
def me(user: AnyUser):
    return user


@router.get("/users", response_model=list[UserOut])
def list_users(session: SessionDep, _admin: Admin):
    return session.scalars(select(User).order_by(User.id)).all()


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(body: UserCreate, session: SessionDep, _admin: Admin):
    user = users.create_user(session, body.username, body.role, body.password)
    session.commit()
    return user


@router.post("/users/{user_id}/tokens", response_model=TokenOut, status_code=201)
def issue_token(
    user_id: int,
    session: SessionDep,
    _admin: Admin,
    name: str = "",
    expires_in_days: float | None = Query(None, gt=0, le=3650, description="unset: until revoked"),
):
    """A token for an API client; it lasts until revoked unless given a lifetime."""
    user = _user(session, user_id)
    lifetime = timedelta(days=expires_in_days) if expires_in_days is not None else None
    token, secret = users.issue_token(session, user, name, lifetime)
    session.commit()
    return TokenOut(id=token.id, token=secret, username=user.username, role=user.role, expires_at=token.expires_at)


@router.get("/users/{user_id}/tokens", response_model=list[TokenInfo])
def list_tokens(user_id: int, session: SessionDep, _admin: Admin):
    """A user's tokens (never their secrets), revoked and expired ones included."""
    return users.tokens_of(session, _user(session, user_id).id)


def _user(session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {user_id}")
    return user


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: int, session: SessionDep, user: AnyUser):
    """Admins revoke any token; others their own."""
    users.revoke_token(session, token_id, user)
    session.commit()
