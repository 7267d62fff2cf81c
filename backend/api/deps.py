"""Dependencies every route uses: the database session, the authenticated user and the project
of the path.

A sync dependency runs in the thread pool, and on these machines each hop there and back costs
about what a query does (a futex wake and a self-pipe write): on the labeling routes the hops
cost more than the work. So the session opens without a hop, the caller's token and the path's
project are read in one (`caller`), and the role and membership checks are plain async
functions that do no I/O."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.core.db.models import MAX_ID, Project, User
from backend.core.db.session import new_session
from backend.core.errors import NotFound
from backend.services.annotating import require_annotator
from backend.services.members import find_visible_project
from backend.services.users import user_for_token


async def get_session() -> AsyncIterator[Session]:
    """One session per request. Opening one does no I/O; closing one inside a transaction
    rolls it back on the server, so that close goes to the thread pool."""
    session = new_session()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]
_bearer = HTTPBearer(auto_error=False)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


@dataclass
class Caller:
    user: User
    project: Project | None  # the path's project, if it has one and the user may see it


def caller(
    request: Request, session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    user = user_for_token(session, credentials.credentials) if credentials else None
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    project_id = request.path_params.get("project_id", "")
    project = None
    if project_id.isdigit() and int(project_id) <= MAX_ID:  # else get_project answers 422 or 404
        project = find_visible_project(session, user, int(project_id))
    return Caller(user, project)


CallerDep = Annotated[Caller, Depends(caller)]


async def annotator_secret(
    project_id: int, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The bearer token of a caller who may label in the path's project (an allowed caller is
    remembered for a while); the labeling hot path checks token, role and membership again in
    its statement."""
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    await require_annotator(credentials.credentials, project_id)
    return credentials.credentials


AnnotatorSecret = Annotated[str, Depends(annotator_secret)]


async def current_user(caller: CallerDep) -> User:
    return caller.user


def require_role(*roles: str):
    async def check(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the role {' or '.join(roles)}")
        return user

    return check


AnyUser = Annotated[User, Depends(current_user)]
Admin = Annotated[User, Depends(require_role("admin"))]
Annotator = Annotated[User, Depends(require_role("admin", "annotator"))]


async def get_project(project_id: int, caller: CallerDep) -> Project:
    """Every /api/projects/{project_id}/... route goes through here: a project the caller may
    not see answers 404, as if it did not exist. Routes declare it before their role check, so
    a non-member learns nothing about the project from a 403 either."""
    if caller.project is None:
        raise NotFound(f"no project {project_id}")
    return caller.project


ProjectDep = Annotated[Project, Depends(get_project)]
