"""Who may see a project: admins see every project; annotators and clients only the
projects they are members of. To anyone else a project does not exist (404), so that its
name and existence are not given away."""

from collections.abc import Sequence

from sqlalchemy import Row, Select, and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from backend.core.db.models import ModelVersion, Project, ProjectMember, User
from backend.core.errors import NotFound


def visible_projects(user: User) -> Select[Project]:
    """SELECT the projects the user may see, by id."""
    query = select(Project).order_by(Project.id)
    if user.role != "admin":
        query = query.join(ProjectMember, ProjectMember.project_id == Project.id).where(ProjectMember.user_id == user.id)
    return query


def find_visible_project(session: Session, user: User, project_id: int) -> Project | None:
    """The project, or None when it does not exist or the user is not a member of it."""
    # one statement: the project, its classes and the user's membership
    row = (
        session.execute(
            select(Project, ProjectMember.user_id)
            .options(joinedload(Project.classes))
            .outerjoin(ProjectMember, and_(ProjectMember.project_id == Project.id, ProjectMember.user_id == user.id))
            .where(Project.id == project_id)
        )
        .unique()
        .first()
    )
    return row.Project if row is not None and (user.role == "admin" or row.user_id is not None) else None


def visible_project(session: Session, user: User, project_id: int) -> Project:
    """The project, or NotFound when it does not exist or the user is not a member of it."""
    project = find_visible_project(session, user, project_id)
    if project is None:
        raise NotFound(f"no project {project_id}")
    return project


def visible_model_versions(session: Session, user: User, project_id: int | None = None) -> list[ModelVersion]:
    """Model versions of one project, or of every project the user may see; the lab-wide start
    models (`xal pretrain`, no project) only for admins."""
    query = select(ModelVersion).order_by(ModelVersion.id)
    if project_id is not None:
        query = query.where(ModelVersion.project_id == visible_project(session, user, project_id).id)
    elif user.role != "admin":
        memberships = select(ProjectMember.project_id).where(ProjectMember.user_id == user.id)
        query = query.where(ModelVersion.project_id.in_(memberships))
    return list(session.scalars(query))


def add_member(session: Session, project: Project, user_id: int) -> ProjectMember | None:
    """Idempotent: adding a member twice keeps the first membership. None only when a concurrent
    add won and a concurrent remove took the membership away again."""
    if session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}")
    member = session.get(ProjectMember, (project.id, user_id))
    if member is None:
        try:
            with session.begin_nested():  # a concurrent add of the same member wins; this one is then a no-op
                member = ProjectMember(project_id=project.id, user_id=user_id)
                session.add(member)
        except IntegrityError:
            member = session.get(ProjectMember, (project.id, user_id))
    return member


def remove_member(session: Session, project: Project, user_id: int) -> None:
    """Idempotent. The user's labels stay; a cell leased to them returns to the queue when its lease ends."""
    if session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id}")
    member = session.get(ProjectMember, (project.id, user_id))
    if member is not None:
        session.delete(member)
        session.flush()


# quoted: Row takes one type parameter (a tuple) before SQLAlchemy 2.1
def list_members(session: Session, project: Project) -> "Sequence[Row[User, ProjectMember]]":
    return session.execute(
        select(User, ProjectMember)
        .join(ProjectMember, ProjectMember.user_id == User.id)
        .where(ProjectMember.project_id == project.id)
        .order_by(User.username)
    ).all()
