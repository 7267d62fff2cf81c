"""Users, passwords (argon2), API tokens (random secrets, stored as sha256) and the sign-in rate limit."""

import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, joinedload

from backend.core.db.models import ApiToken, LoginAttempt, User, utcnow
from backend.core.errors import Conflict, Invalid, NotFound
from backend.core.settings import get_settings

ROLES = ("admin", "annotator", "client")
_hasher = PasswordHasher()


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_user(session: Session, username: str, role: str, password: str | None = None) -> User:
    if role not in ROLES:
        raise Invalid(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if not username or len(username) > 100:
        raise Invalid("username must be 1-100 characters")
    if session.scalar(select(User).where(User.username == username)):
        raise Conflict(f"user {username!r} exists already")
    user = User(username=username, role=role, password_hash=_hasher.hash(password) if password else None)
    session.add(user)
    session.flush()
    return user


def issue_token(session: Session, user: User, name: str = "") -> tuple[ApiToken, str]:
    """Returns the stored token and its secret; the secret is shown once and never stored."""
    secret = "xal_" + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, token_hash=_token_hash(secret), name=name)
    session.add(token)
    session.flush()
    return token, secret


LAST_USED_RESOLUTION = timedelta(minutes=1)


def user_for_token(session: Session, secret: str) -> User | None:
    """The token's user, its last use noted at most once a minute: a write and a commit on
    every request cost the labeling API more than the rest of its authentication."""
    token = session.scalar(
        select(ApiToken)
        .options(joinedload(ApiToken.user))
        .where(ApiToken.token_hash == _token_hash(secret), ApiToken.revoked_at.is_(None))
    )
    if token is None:
        return None
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        token.last_used_at = now
        session.commit()
    return token.user


def login(session: Session, username: str, password: str, client_ip: str) -> User | None:
    """The user whose password this is, or None; the attempt is recorded for the rate limit.
    Call login_blocked_for first: a blocked sign-in must not even check the password."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None or user.password_hash is None:
        _hasher.hash(password)  # same cost whether or not the user exists
        user = None
    else:
        try:
            _hasher.verify(user.password_hash, password)
        except VerificationError:
            user = None
    now = utcnow()
    session.execute(
        delete(LoginAttempt).where(LoginAttempt.created_at < now - timedelta(seconds=get_settings().login_window_seconds))
    )
    session.add(LoginAttempt(username=username, client_ip=client_ip, succeeded=user is not None, created_at=now))
    session.flush()
    return user


@dataclass
class LoginBlock:
    reason: str
    retry_after_seconds: int


def login_blocked_for(session: Session, username: str, client_ip: str) -> LoginBlock | None:
    """Whether sign-in is refused: the user name had login_max_failures failed sign-ins within the
    window since its last successful one, or the client address login_max_failures_per_ip (a
    success does not clear an address's record: one known account must not reset a guesser).
    Blocked attempts are not recorded, so the block ends when the window has passed."""
    settings = get_settings()
    now = utcnow()
    window_start = now - timedelta(seconds=settings.login_window_seconds)
    last_success = session.scalar(
        select(func.max(LoginAttempt.created_at)).where(LoginAttempt.username == username, LoginAttempt.succeeded)
    )
    checks = (
        (
            LoginAttempt.username == username,
            max(window_start, last_success or window_start),
            settings.login_max_failures,
            "for this user name",
        ),
        (LoginAttempt.client_ip == client_ip, window_start, settings.login_max_failures_per_ip, "from this address"),
    )
    for matches, since, limit, scope in checks:
        # the limit-th latest failure: once it leaves the window, fewer than `limit` remain
        nth_latest = session.scalar(
            select(LoginAttempt.created_at)
            .where(matches, ~LoginAttempt.succeeded, LoginAttempt.created_at > since)
            .order_by(LoginAttempt.created_at.desc())
            .offset(limit - 1)
            .limit(1)
        )
        if nth_latest is not None:
            wait = nth_latest + timedelta(seconds=settings.login_window_seconds) - now
            return LoginBlock(f"too many failed sign-ins {scope}", max(1, math.ceil(wait.total_seconds())))
    return None


def revoke_token(session: Session, token_id: int, by: User) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or (by.role != "admin" and token.user_id != by.id):
        raise NotFound(f"no token {token_id}")
    token.revoked_at = token.revoked_at or utcnow()
    return token
