"""Dependencies every route uses: the database session and the authenticated user."""
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.db.models import Project, User
from backend.db.session import get_session
from backend.services.members import visible_project
from backend.services.users import user_for_token

SessionDep = Annotated[Session, Depends(get_session)]
_bearer = HTTPBearer(auto_error=False)


def current_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    user = user_for_token(session, credentials.credentials) if credentials else None
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


def require_role(*roles: str):
    def check(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the role {' or '.join(roles)}")
        return user

    return check


AnyUser = Annotated[User, Depends(current_user)]
Admin = Annotated[User, Depends(require_role("admin"))]
Annotator = Annotated[User, Depends(require_role("admin", "annotator"))]


def get_project(project_id: int, session: SessionDep, user: AnyUser) -> Project:
    """Every /api/projects/{project_id}/... route goes through here: a project the caller may
    not see answers 404, as if it did not exist. Routes declare it before their role check, so
    a non-member learns nothing about the project from a 403 either."""
    return visible_project(session, user, project_id)


ProjectDep = Annotated[Project, Depends(get_project)]
