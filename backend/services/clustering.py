"""Deep clustering of a project's pool: requested here, computed by a Celery worker
(worker.clustering), shown on the admin dashboard, and used by a `cold_start = clusters`
project to spread its first k cells over the clusters."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.db.models import Image, ImageCluster, Label, PoolClustering, Project, ProjectClass
from backend.core.errors import Conflict, Invalid
from backend.core.jobs import ACTIVE, ClusteringConfig, JobState
from backend.core.outbox import enqueue
from backend.core.queries import is_current
from backend.services.projects import count_pool

EXAMPLES_PER_CLUSTER = 8


def latest_clustering(session: Session, project: Project, state: str | None = None) -> PoolClustering | None:
    query = select(PoolClustering).where(PoolClustering.project_id == project.id)
    if state is not None:
        query = query.where(PoolClustering.state == state)
    return session.scalar(query.order_by(PoolClustering.id.desc()).limit(1))


def active_clustering(session: Session, project: Project) -> PoolClustering | None:
    """The project's clustering that is queued or running, if any (one at a time)."""
    return session.scalar(
        select(PoolClustering)
        .where(PoolClustering.project_id == project.id, PoolClustering.state.in_(ACTIVE))
        .order_by(PoolClustering.id.desc())
        .limit(1)
    )


def new_clustering(project: Project, config: ClusteringConfig) -> PoolClustering:
    """A queued clustering's row, not yet added; n_clusters defaults to the number of classes."""
    settings = config.model_dump()
    if settings["n_clusters"] is None:
        settings["n_clusters"] = len(project.classes)
    return PoolClustering(project_id=project.id, config=settings, progress={"phase": "queued"})


def request_clustering(session: Session, project: Project, config: ClusteringConfig) -> PoolClustering:
    """Queues a clustering of the pool; one at a time per project."""
    if active_clustering(session, project) is not None:
        raise Conflict("a clustering of this pool is already queued or running")
    clustering = new_clustering(project, config)
    settings = clustering.config
    pool_size = count_pool(session, project)
    if min(pool_size, settings["max_cells"]) < settings["n_clusters"]:
        raise Invalid(
            f"clustering into {settings['n_clusters']} clusters needs at least as many pool cells "
            f"(the pool has {pool_size}, max_cells is {settings['max_cells']})"
        )
    session.add(clustering)
    session.commit()
    enqueue(PoolClustering, clustering.id)
    return clustering


def clustering_overview(session: Session, project: Project, show_reference: bool = False) -> dict:
    """The latest clustering: its state, progress and metrics; once done, each cluster's size
    and example cells, and every pool cell's point on the PCA plane with its label (or, for
    admins, its reference class) where known."""
    clustering = latest_clustering(session, project)
    if clustering is None or clustering.state != JobState.DONE:
        return {"clustering": clustering, "clusters": [], "points": []}
    label = (
        select(ProjectClass.name)
        .join(Label, Label.class_id == ProjectClass.id)
        .where(Label.image_id == ImageCluster.image_id, is_current())
        .limit(1)
        .scalar_subquery()
    )
    reference = select(ProjectClass.name).where(ProjectClass.id == Image.reference_class_id).scalar_subquery()
    rows = session.execute(
        select(ImageCluster.image_id, ImageCluster.x, ImageCluster.y, ImageCluster.cluster, label, reference)
        .join(Image, Image.id == ImageCluster.image_id)
        .where(ImageCluster.clustering_id == clustering.id)
        .order_by(ImageCluster.image_id)
    ).all()
    points: list[dict] = []
    members: dict[int, list[int]] = {}
    for image_id, x, y, cluster, labeled_as, reference_class in rows:
        points.append(
            {
                "image_id": image_id,
                "x": x,
                "y": y,
                "cluster": cluster,
                "label": labeled_as or (reference_class if show_reference else None),
            }
        )
        members.setdefault(cluster, []).append(image_id)
    clusters = [
        {"cluster": c, "size": len(ids), "example_image_ids": ids[:EXAMPLES_PER_CLUSTER]}
        for c, ids in sorted(members.items())
    ]
    return {"clustering": clustering, "clusters": clusters, "points": points}
