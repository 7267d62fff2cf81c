"""Users, passwords (argon2), API tokens (random secrets, stored as sha256) and the sign-in rate limit."""

import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import ColumnElement, Select, and_, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from backend.core.db.models import ApiToken, LoginAttempt, User, utcnow
from backend.core.errors import Conflict, Invalid, NotFound
from backend.core.names import display_name, name_key
from backend.core.settings import get_settings

ROLES = ("admin", "annotator", "client")
_hasher = PasswordHasher()


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_user(session: Session, username: str, role: str, password: str | None = None) -> User:
    if role not in ROLES:
        raise Invalid(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    username = display_name(username, "user name")
    key = name_key(username, "user name")
    if max(len(username), len(key)) > 100:
        raise Invalid("a user name is at most 100 characters")
    existing = user_named(session, key)
    if existing is not None:
        raise Conflict(
            f"user {existing.username!r} exists already (user names that differ only in case or width are one name)"
        )
    user = User(username=username, username_key=key, role=role, password_hash=_hasher.hash(password) if password else None)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as error:  # the same name created at the same moment
        raise Conflict(f"user {username!r} exists already") from error
    return user


def user_named(session: Session, username: str) -> User | None:
    """The user of this name, however it is cased or written (NFKC)."""
    return session.scalar(select(User).where(User.username_key == name_key(username, "user name")))


def issue_token(session: Session, user: User, name: str = "", lifetime: timedelta | None = None) -> tuple[ApiToken, str]:
    """Returns the stored token and its secret; the secret is shown once and never stored.
    Without a `lifetime` the token lasts until revoked."""
    secret = "xal_" + secrets.token_urlsafe(32)
    expires_at = utcnow() + lifetime if lifetime is not None else None
    token = ApiToken(user_id=user.id, token_hash=_token_hash(secret), name=name, expires_at=expires_at)
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
        .where(ApiToken.token_hash == _token_hash(secret), usable_token(utcnow()))
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
    key = name_key(username, "user name")
    user = user_named(session, key)
    if user is None or user.password_hash is None:
        _hasher.hash(password)  # same cost whether or not the user exists
        user = None
    else:
        try:
            _hasher.verify(user.password_hash, password)
        except VerificationError:
            user = None
    now = utcnow()
    settings = get_settings()
    session.execute(
        delete(LoginAttempt).where(
            or_(
                ~LoginAttempt.succeeded & (LoginAttempt.created_at < now - timedelta(seconds=settings.login_window_seconds)),
                LoginAttempt.succeeded & (LoginAttempt.created_at < now - timedelta(days=settings.login_known_address_days)),
            )
        )
    )
    if user is not None:  # the latest success is all that makes an address known
        session.execute(delete(LoginAttempt).where(_pair(key, client_ip), LoginAttempt.succeeded))
    session.add(LoginAttempt(username=key, client_ip=client_ip, succeeded=user is not None, created_at=now))
    session.flush()
    return user


@dataclass
class LoginBlock:
    reason: str
    retry_after_seconds: int


def login_blocked_for(session: Session, username: str, client_ip: str) -> LoginBlock | None:
    """Whether this sign-in is refused before its password is checked. Failures within the window
    are counted three ways, none of which lets a stranger lock a user out of their own address:

    - per (user name, address), since the pair's last success: login_max_failures are free, then
      each failure doubles the wait before the next try (1 s, 2 s, 4 s ... at most the window);
    - per user name, from every address (guessing from many addresses): from
      login_max_failures_per_user on, each address with a failure for it is refused until enough
      failures have left the window; an address without one still signs in;
    - per address, for every user name (one address trying many names): from
      login_max_failures_per_ip on, the address is refused.

    The last two never refuse a user at a known address, one the user signed in from within
    login_known_address_days. Refused attempts are not recorded, so every wait ends on time."""
    settings = get_settings()
    key = name_key(username, "user name")
    now = utcnow()
    window = timedelta(seconds=settings.login_window_seconds)
    known_since = session.scalar(
        select(func.max(LoginAttempt.created_at)).where(_pair(key, client_ip), LoginAttempt.succeeded)
    )
    failures = select(LoginAttempt.created_at).where(~LoginAttempt.succeeded, LoginAttempt.created_at > now - window)
    pair_failures = failures.where(_pair(key, client_ip), LoginAttempt.created_at > (known_since or now - window)).subquery()
    count, latest = session.execute(select(func.count(), func.max(pair_failures.c.created_at))).one()
    if count >= settings.login_max_failures:
        doubling = 1 << min(count - settings.login_max_failures, 30)
        wait_until = latest + timedelta(seconds=min(settings.login_window_seconds, doubling))
        if wait_until > now:
            return _block("for this user name from this address", wait_until - now)
    if known_since is not None:
        return None
    if count:
        until = _refused_until(session, failures.where(LoginAttempt.username == key), settings.login_max_failures_per_user)
        if until is not None:
            return _block("for this user name, from this address among others", until - now)
    until = _refused_until(session, failures.where(LoginAttempt.client_ip == client_ip), settings.login_max_failures_per_ip)
    if until is not None:
        return _block("from this address", until - now)
    return None


def _pair(key: str, client_ip: str) -> ColumnElement[bool]:
    return (LoginAttempt.username == key) & (LoginAttempt.client_ip == client_ip)


def _refused_until(session: Session, failures: Select, limit: int) -> datetime | None:
    """When fewer than `limit` of these failures will be left in the window: the limit-th latest leaves it."""
    nth_latest = session.scalar(failures.order_by(LoginAttempt.created_at.desc()).offset(limit - 1).limit(1))
    return nth_latest + timedelta(seconds=get_settings().login_window_seconds) if nth_latest is not None else None


def _block(scope: str, wait: timedelta) -> LoginBlock:
    return LoginBlock(f"too many failed sign-ins {scope}", max(1, math.ceil(wait.total_seconds())))


def usable_token(now: datetime):
    """SQL condition: the token is neither revoked nor expired."""
    return and_(ApiToken.revoked_at.is_(None), or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now))


def tokens_of(session: Session, user_id: int) -> list[ApiToken]:
    """A user's tokens, newest first, revoked and expired ones included (no secrets: only hashes are stored)."""
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id.desc())))


def revoke_secret(session: Session, secret: str) -> None:
    """Revokes the token whose secret this is (signing out)."""
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_hash(secret)))
    if token is not None:
        token.revoked_at = token.revoked_at or utcnow()


def revoke_token(session: Session, token_id: int, by: User) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or (by.role != "admin" and token.user_id != by.id):
        raise NotFound(f"no token {token_id}")
    token.revoked_at = token.revoked_at or utcnow()
    return token
