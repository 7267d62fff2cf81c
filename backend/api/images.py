"""A project's cells: upload (image files and zips), list, one image, its file and its mask."""

import io
import posixpath
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image as PILImage, UnidentifiedImageError
from sqlalchemy import func, select
from sqlalchemy.orm import aliased
from starlette.responses import Response

from backend.api.deps import Admin, AnyUser, ProjectDep, SessionDep, caller
from backend.api.edge import BODY_LIMIT
from backend.core.blobs import get_blob_store
from backend.core.db.models import Image, Label, Project, ProjectClass, RelevanceMap, User
from backend.core.db.session import new_session
from backend.core.errors import Invalid, NotFound
from backend.core.queries import is_current
from backend.core.readers import IncomingFile, files_from_zip
from backend.core.settings import get_settings
from backend.schemas import ImageOut, ImagePage, ImportReportOut, RelevanceMapOut, Split
from backend.services.imports import import_images
from backend.services.labeling import check_maps_visible
from backend.services.projects import project_image

# Blobs are content-addressed: a URL's bytes never change. "private": the API needs a token.
IMMUTABLE = "private, max-age=31536000, immutable"
_MEDIA_TYPES = {
    ".png": "image/png",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".bmp": "image/bmp",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class UploadRoute(APIRoute):
    """A route that takes files. FastAPI reads (and spools to disk) a multipart body before it
    runs the route's dependencies, so the caller's token is checked here first; then the body
    may have up to settings.max_upload_bytes (counted by backend.api.edge.BodyGuard)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def upload_handler(request: Request) -> Response:
            await run_in_threadpool(_require_token, request, await _bearer(request))
            limit = request.scope[BODY_LIMIT]
            limit.max_bytes, limit.setting = get_settings().max_upload_bytes, "XAL_MAX_UPLOAD_BYTES"
            limit.advice = "; split the upload, or import a folder on the server with `xal import`"
            return await handler(request)

        return upload_handler


_bearer = HTTPBearer(auto_error=False)


def _require_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    with new_session() as session:
        caller(request, session, credentials)  # 401 without a valid token


router = APIRouter(tags=["images"])
uploads = APIRouter(tags=["images"], route_class=UploadRoute)


@uploads.post("/projects/{project_id}/images", response_model=ImportReportOut, status_code=201)
def upload_images(
    project: ProjectDep,
    session: SessionDep,
    _admin: Admin,
    files: Annotated[list[UploadFile], File(description="image files (PNG, TIFF, BMP, JPEG) and/or zip archives")],
    split: Annotated[Split, Form()] = "pool",
    on_duplicate: Annotated[Literal["error", "skip"], Form()] = "error",
    on_invalid: Annotated[Literal["error", "skip"], Form()] = "error",
):
    """Adds cells to the pool or the test split. A zip may hold one folder per class, masks
    named `<stem>_mask.<ext>` and a `labels.csv`. All or nothing unless told to skip."""
    settings = get_settings()
    class_names = [c.name for c in project.classes]
    incoming: list[IncomingFile] = []
    for upload in files:
        data = upload.file.read()
        name = posixpath.basename((upload.filename or "").replace("\\", "/")) or "upload"
        if name.casefold().endswith(".zip") or data[:4] in _ZIP_MAGIC:
            incoming += files_from_zip(data, settings, class_names=class_names, name=name)
        else:
            incoming.append(IncomingFile(filename=name, data=data))
    report = import_images(session, project, incoming, split, on_duplicate, on_invalid)
    session.commit()
    return ImportReportOut(
        imported=len(report.image_ids),
        image_ids=report.image_ids,
        duplicates=report.duplicates,
        invalid=report.invalid,
    )


router.include_router(uploads)


@router.get("/projects/{project_id}/images", response_model=ImagePage)
def list_images(
    project: ProjectDep,
    session: SessionDep,
    user: AnyUser,
    split: Split | None = None,
    status: Literal["labeled", "unlabeled"] | None = None,
    class_name: Annotated[str | None, Query(description="only cells whose current label is this class")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
):
    query, current, label_class = _images_with_classes(project)
    if split:
        query = query.where(Image.split == split)
    if status == "labeled":
        query = query.where(current.id.is_not(None))
    elif status == "unlabeled":
        query = query.where(current.id.is_(None))
    if class_name is not None:
        if class_name not in {c.name for c in project.classes}:
            names = ", ".join(c.name for c in project.classes)
            raise Invalid(f"project {project.name!r} has no class {class_name!r}; its classes are: {names}")
        query = query.where(label_class.name == class_name)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.execute(query.order_by(Image.id).limit(limit).offset(offset))
    return ImagePage(total=total, items=[_image_out(*row, user) for row in rows])


@router.get("/projects/{project_id}/images/{image_id}", response_model=ImageOut)
def get_image(image_id: int, project: ProjectDep, session: SessionDep, user: AnyUser):
    query, _current, _label_class = _images_with_classes(project)
    row = session.execute(query.where(Image.id == image_id)).first()
    if row is None:
        raise NotFound(f"project {project.name!r} has no image {image_id}")
    return _image_out(*row, user)


@router.get("/projects/{project_id}/images/{image_id}/file", response_class=Response)
def get_image_file(image_id: int, project: ProjectDep, session: SessionDep):
    """The original bytes as uploaded."""
    image = project_image(session, project, image_id)
    return _blob_response(image.content_hash, image.filename)


@router.get("/projects/{project_id}/images/{image_id}/mask", response_class=Response)
def get_image_mask(image_id: int, project: ProjectDep, session: SessionDep):
    image = project_image(session, project, image_id)
    if image.mask_key is None:
        raise NotFound(f"image {image_id} of project {project.name!r} has no mask")
    return _blob_response(image.mask_key, "")


@router.get("/projects/{project_id}/images/{image_id}/maps", response_model=list[RelevanceMapOut])
def list_relevance_maps(image_id: int, project: ProjectDep, session: SessionDep, user: AnyUser):
    """The cell's relevance maps, newest model first: a PNG heat map (blue = negative,
    white = none, red = positive relevance; see the README) and the raw array (npy).
    403 for an annotator of a "label first, then reveal" project while the cell has no label."""
    image = project_image(session, project, image_id)
    check_maps_visible(session, project, user, image)
    maps = session.scalars(
        select(RelevanceMap)
        .where(RelevanceMap.image_id == image.id)
        .order_by(RelevanceMap.model_version_id.desc(), RelevanceMap.method)
    )
    base = f"/api/projects/{project.id}/images/{image.id}/maps"
    return [
        RelevanceMapOut(
            method=m.method, model_version_id=m.model_version_id, png_url=f"{base}/{m.id}.png", npy_url=f"{base}/{m.id}.npy"
        )
        for m in maps
    ]


@router.get("/projects/{project_id}/images/{image_id}/maps/{map_id}.{kind}", response_class=Response)
def get_relevance_map(
    image_id: int, map_id: int, kind: Literal["png", "npy"], project: ProjectDep, session: SessionDep, user: AnyUser
):
    image = project_image(session, project, image_id)
    check_maps_visible(session, project, user, image)
    relevance_map = session.get(RelevanceMap, map_id)
    if relevance_map is None or relevance_map.image_id != image.id:
        raise NotFound(f"image {image_id} has no relevance map {map_id}")
    if kind == "png":
        return _blob_response(relevance_map.png_key, "map.png")
    return Response(
        get_blob_store().get(relevance_map.npy_key),
        media_type="application/octet-stream",
        headers={"Cache-Control": IMMUTABLE, "Content-Disposition": f'attachment; filename="map-{map_id}.npy"'},
    )


def _images_with_classes(project: Project):
    """SELECT image, its current label's class name, its reference class name; and the aliases
    of the current label and its class, to filter on."""
    current = aliased(Label)
    label_class = aliased(ProjectClass)
    reference_class = aliased(ProjectClass)
    query = (
        select(Image, label_class.name, reference_class.name)
        .outerjoin(current, (current.image_id == Image.id) & is_current(current))
        .outerjoin(label_class, label_class.id == current.class_id)
        .outerjoin(reference_class, reference_class.id == Image.reference_class_id)
        .where(Image.project_id == project.id)
    )
    return query, current, label_class


def _image_out(image: Image, label: str | None, reference_class: str | None, user: User) -> ImageOut:
    # The reference class is the ground truth, and metadata such as the specimen can give it
    # away: annotators see neither, so that their labels stay independent.
    annotator = user.role == "annotator"
    return ImageOut(
        id=image.id,
        filename=image.filename,
        content_hash=image.content_hash,
        width=image.width,
        height=image.height,
        split=image.split,
        has_mask=image.mask_key is not None,
        reference_class=None if annotator else reference_class,
        label=label,
        meta={} if annotator else image.meta,
    )


def _blob_response(key: str, filename: str) -> Response:
    data = get_blob_store().get(key)
    return Response(
        content=data,
        media_type=_media_type(data, filename),
        headers={"Cache-Control": IMMUTABLE, "ETag": f'"{key}"'},
    )


def _media_type(data: bytes, filename: str) -> str:
    """What the bytes are (Pillow reads the header), else what the file name says."""
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            if image.format in PILImage.MIME:
                return PILImage.MIME[image.format]
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    return _MEDIA_TYPES.get(posixpath.splitext(filename)[1].casefold(), "application/octet-stream")
