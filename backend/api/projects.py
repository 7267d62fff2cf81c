"""Projects: create, read, change settings, start the budget loop, progress, members."""

from fastapi import APIRouter

from backend.api.deps import Admin, AnyUser, ProjectDep, SessionDep
from backend.core.strategies import catalogue_json
from backend.schemas import (
    MemberOut,
    ModelVersionOut,
    Progress,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
    RoundOut,
)
from backend.services import members, projects, rounds

router = APIRouter(tags=["projects"])


@router.get("/strategies")
def list_strategies(_user: AnyUser) -> list[dict]:
    """The selection strategies: name, what each reads of the pool, its options (JSON schema) and what it does."""
    default = ProjectCreate.model_fields["strategy"].default
    return [{**entry, "default": entry["name"] == default} for entry in catalogue_json()]


@router.post("/projects", response_model=ProjectOut, status_code=201)
def create_project(body: ProjectCreate, session: SessionDep, _admin: Admin):
    project = projects.create_project(session, body)
    session.commit()
    return project


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(session: SessionDep, user: AnyUser):
    """Every project for admins; for annotators and clients the projects they are members of."""
    return session.scalars(members.visible_projects(user)).all()


@router.get("/projects/{project_id}", response_model=ProjectOut)
def get_project(project: ProjectDep):
    return project


@router.patch("/projects/{project_id}", response_model=ProjectOut)
def update_project(body: ProjectUpdate, project: ProjectDep, session: SessionDep, _admin: Admin):
    projects.update_project(session, project, body)
    session.commit()
    return project


@router.post("/projects/{project_id}/start", response_model=RoundOut, status_code=202)
def start_project(project: ProjectDep, session: SessionDep, _admin: Admin):
    """Fixes the budget (defaults from the pool size) and queues round 0, the first k cells."""
    return rounds.start_project(session, project)


@router.get("/projects/{project_id}/progress", response_model=Progress)
def get_progress(project: ProjectDep, session: SessionDep):
    return rounds.progress(session, project)


@router.get("/projects/{project_id}/members", response_model=list[MemberOut])
def list_members(project: ProjectDep, session: SessionDep, _admin: Admin):
    """The annotators and clients who see this project (admins see every project)."""
    return [
        MemberOut(id=user.id, username=user.username, role=user.role, added_at=member.added_at)
        for user, member in members.list_members(session, project)
    ]


@router.put("/projects/{project_id}/members/{user_id}", status_code=204)
def add_member(user_id: int, project: ProjectDep, session: SessionDep, _admin: Admin):
    """Makes the user a member of the project; adding a member again changes nothing."""
    members.add_member(session, project, user_id)
    session.commit()


@router.delete("/projects/{project_id}/members/{user_id}", status_code=204)
def remove_member(user_id: int, project: ProjectDep, session: SessionDep, _admin: Admin):
    """The user no longer sees the project; their labels stay. Removing a non-member changes nothing."""
    members.remove_member(session, project, user_id)
    session.commit()


@router.get("/models", response_model=list[ModelVersionOut])
def list_models(session: SessionDep, user: AnyUser, project_id: int | None = None):
    """Model versions of the projects the caller sees (or of one); start models for admins."""
    return members.visible_model_versions(session, user, project_id)
