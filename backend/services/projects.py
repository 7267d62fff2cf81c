"""Projects: creation, settings, and the budget defaults (thesis Table 2, docs/method.md)."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.budget import budget_sizes
from backend.core.db.models import Image, Label, ModelVersion, Project, ProjectClass
from backend.core.errors import Conflict, Invalid, NotFound
from backend.core.names import display_name, name_key
from backend.core.strategies import check_strategy
from backend.schemas import ProjectCreate, ProjectUpdate

DEFAULT_KEYS = "123456789abcdefghijklmnopqrstuvwxyz0"


def create_project(session: Session, spec: ProjectCreate) -> Project:
    name = display_name(spec.name, "project name")
    if session.scalar(select(Project).where(Project.name == name)):
        raise Conflict(f"a project named {name!r} exists already")
    check_strategy(spec.strategy, spec.strategy_options)
    class_names = [display_name(c.name, "class name") for c in spec.classes]
    if len({name_key(n, "class name") for n in class_names}) != len(class_names):
        raise Invalid("class names must be unique (names that differ only in case or width are one name)")
    explicit = {c.key for c in spec.classes if c.key}
    if len(explicit) != len([c for c in spec.classes if c.key]):
        raise Invalid("shortcut keys must be unique")
    free_keys = iter(k for k in DEFAULT_KEYS if k not in explicit)
    if spec.start_model_id is not None and session.get(ModelVersion, spec.start_model_id) is None:
        raise Invalid(f"no model version {spec.start_model_id} to start from")
    project = Project(
        name=name,
        description=spec.description,
        channel=spec.channel,
        budget=spec.budget,
        initial_size=spec.initial_size,
        step_size=spec.step_size,
        strategy=spec.strategy,
        strategy_options=spec.strategy_options,
        reveal_after_label=spec.reveal_after_label,
        cold_start=spec.cold_start,
        model_settings=spec.model_settings.model_dump(),
        start_model_id=spec.start_model_id,
        classes=[
            ProjectClass(name=class_name, key=c.key or next(free_keys), position=i)
            for i, (class_name, c) in enumerate(zip(class_names, spec.classes))
        ],
    )
    session.add(project)
    session.flush()
    return project


def update_project(session: Session, project: Project, changes: ProjectUpdate) -> Project:
    fields = changes.model_dump(exclude_unset=True, exclude_none=True)  # null = leave as is
    if "strategy" in fields or "strategy_options" in fields:
        check_strategy(fields.get("strategy", project.strategy), fields.get("strategy_options", project.strategy_options))
    if "budget" in fields and project.state != "draft":
        labeled = count_labeled(session, project)
        if fields["budget"] < labeled:
            raise Conflict(f"the budget cannot go below the {labeled} labels already given")
    if "model_settings" in fields and changes.model_settings is not None:  # not None: in fields
        fields["model_settings"] = changes.model_settings.model_dump()
    for name, value in fields.items():
        setattr(project, name, value)
    session.flush()
    return project


def find_project(session: Session, ref: str | int) -> Project:
    project = session.get(Project, int(ref)) if str(ref).isdigit() else None
    project = project or session.scalar(select(Project).where(Project.name == str(ref)))
    if project is None:
        raise NotFound(f"no project {ref!r}")
    return project


def project_image(session: Session, project: Project, image_id: int) -> Image:
    return image_of_project(project, image_id, session.get(Image, image_id))


def image_of_project(project: Project, image_id: int, image: Image | None) -> Image:
    """`image` (image `image_id` as loaded, or None), or NotFound unless it is the project's."""
    if image is None or image.project_id != project.id:
        raise NotFound(f"project {project.name!r} has no image {image_id}")
    return image


def count_pool(session: Session, project: Project) -> int:
    return session.scalar(select(func.count(Image.id)).where(Image.project_id == project.id, Image.split == "pool")) or 0


def count_labeled(session: Session, project: Project) -> int:
    """Pool cells with a current label. Labels come only from the queue, whose cells are pool
    cells, so this counts the project's current labels: it reads the labels, not the whole
    pool (the queue asks on every `next` while a round is computed)."""
    from backend.core.queries import is_current

    return session.scalar(select(func.count(Label.id)).where(Label.project_id == project.id, is_current())) or 0


def resolve_budget(project: Project, pool_size: int) -> None:
    """Fills B, k and m where the project left them to the defaults (backend.core.budget)."""
    project.budget, project.initial_size, project.step_size = budget_sizes(
        pool_size, len(project.classes), project.budget, project.initial_size, project.step_size
    )
