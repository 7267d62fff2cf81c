"""Projects: create, read, change settings, start the budget loop, progress."""
from fastapi import APIRouter
from sqlalchemy import select

from backend.api.deps import Admin, AnyUser, ProjectDep, SessionDep
from backend.db.models import ModelVersion, Project
from backend.schemas import ModelVersionOut, Progress, ProjectCreate, ProjectOut, ProjectUpdate, RoundOut
from backend.services import projects, rounds

router = APIRouter(tags=["projects"])


@router.post("/projects", response_model=ProjectOut, status_code=201)
def create_project(body: ProjectCreate, session: SessionDep, _admin: Admin):
    project = projects.create_project(session, body)
    session.commit()
    return project


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(session: SessionDep, _user: AnyUser):
    return session.scalars(select(Project).order_by(Project.id)).all()


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


@router.get("/models", response_model=list[ModelVersionOut])
def list_models(session: SessionDep, _user: AnyUser, project_id: int | None = None):
    query = select(ModelVersion).order_by(ModelVersion.id)
    if project_id is not None:
        query = query.where(ModelVersion.project_id == project_id)
    return session.scalars(query).all()
