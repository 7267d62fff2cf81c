"""Users, passwords (argon2) and API tokens (random secrets, stored as sha256)."""
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import ApiToken, User, utcnow
from backend.errors import Conflict, Invalid, NotFound

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


def user_for_token(session: Session, secret: str) -> User | None:
    token = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == _token_hash(secret), ApiToken.revoked_at.is_(None))
    )
    if token is None:
        return None
    token.last_used_at = utcnow()
    return token.user


def login(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username))
    if user is None or user.password_hash is None:
        _hasher.hash(password)  # same cost whether or not the user exists
        return None
    try:
        _hasher.verify(user.password_hash, password)
    except VerificationError:
        return None
    return user


def revoke_token(session: Session, token_id: int, by: User) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or (by.role != "admin" and token.user_id != by.id):
        raise NotFound(f"no token {token_id}")
    token.revoked_at = token.revoked_at or utcnow()
    return token
