"""Deep clustering of a project's pool and its overview."""

from fastapi import APIRouter

from backend.api.deps import Admin, AnyUser, ProjectDep, SessionDep
from backend.core.jobs import ClusteringConfig
from backend.schemas import ClusteringOut, ClusteringOverview
from backend.services import clustering

router = APIRouter(tags=["clustering"])


@router.post("/projects/{project_id}/clustering", response_model=ClusteringOut, status_code=202)
def request_clustering(project: ProjectDep, session: SessionDep, _admin: Admin, body: ClusteringConfig | None = None):
    """Queues a deep clustering of the pool (one at a time); follow it with GET."""
    return clustering.request_clustering(session, project, body or ClusteringConfig())


@router.get("/projects/{project_id}/clustering", response_model=ClusteringOverview)
def get_clustering(project: ProjectDep, session: SessionDep, user: AnyUser):
    """The latest clustering (null when there is none) and, once done, its clusters and PCA points."""
    return clustering.clustering_overview(session, project, show_reference=user.role == "admin")
