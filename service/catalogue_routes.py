"""The catalogue and the page: categories, product images by id, example scenes, the page's files."""
from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from retrieval.results import RetrievalError
from service.errors import ApiError
from service.product_images import ProductImageError
from service.state import API_VERSION, ServiceDep, model_info

STATIC_DIR = Path(__file__).resolve().parent / "static"
router = APIRouter()


def media_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


@router.get(f"/{API_VERSION}/categories", summary="The categories a look covers, with their product counts")
async def categories(service: ServiceDep):
    r = service.retriever
    found = []
    for c in r.categories:
        try:
            r.resolve_category(c)
        except RetrievalError:
            continue           # in the index but unknown to the model: a look leaves it out
        found.append({"category": c, "name": c.rsplit("|", 1)[-1], "products": len(r.index.rows_for_category(c))})
    return {"index_version": r.index.version, "products": r.index.n, "categories": found, "model": model_info(r)}


@router.get(f"/{API_VERSION}/products/{{product_id}}/image", summary="A catalogue image, by product id")
def product_image(service: ServiceDep, product_id: str):
    try:
        path = service.images.path(service.retriever.index, product_id)
    except ProductImageError as exc:
        raise ApiError(404, str(exc)) from None
    return FileResponse(path, media_type=media_type(path), headers={"Cache-Control": "public, max-age=3600"})


@router.get(f"/{API_VERSION}/examples", summary="Example scenes for the page")
async def examples(service: ServiceDep):
    return {"examples": [{"id": i, "name": p.name, "url": f"/{API_VERSION}/examples/{i}"}
                         for i, p in enumerate(service.settings.examples)]}


@router.get(f"/{API_VERSION}/examples/{{number}}", summary="One example scene")
def example(service: ServiceDep, number: int):
    offered = service.settings.examples
    if not 0 <= number < len(offered):
        raise ApiError(404, f"no example {number}; there are {len(offered)}")
    path = offered[number]
    if not path.is_file():
        raise ApiError(404, f"example {number} is missing on the server")
    return FileResponse(path, media_type=media_type(path))


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
