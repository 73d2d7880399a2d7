"""The scene queries: POST /v1/look, /v1/retrieve and /v1/compatibility, each answered by the model executor."""
# No `from __future__ import annotations` here: FastAPI reads the endpoints' parameter annotations at run time.
import asyncio
import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi import Query as QueryParam
from fastapi.responses import JSONResponse, Response

from common import defaults
from common.errors import CtlError
from pipeline.images import ImageError
from retrieval.results import RetrievalError
from service.errors import ApiError
from service.executor import Query, QueueFull, ServiceStopped
from service.state import API_VERSION, Service, ServiceDep

MAX_PRODUCTS = 100                     # product ids one compatibility request may ask about
log = logging.getLogger("ctl.serve")
router = APIRouter(prefix=f"/{API_VERSION}")

Scene = Annotated[UploadFile, File(description="the scene photo (any image format)")]
K = Annotated[int, QueryParam(ge=1, description="products (per category for a look); at most --max-k")]
Candidates = Annotated[int | None, QueryParam(ge=1, description="stage-1 candidates pulled from the index by "
                                              "each category's hybrid query before the exact hybrid re-rank; at "
                                              "most the server's limit; default: k plus a margin on an exact "
                                              "index, else 200")]
Categories = Annotated[list[str] | None, QueryParam(description="repeat for several; default: all")]
Category = Annotated[str | None, QueryParam(description="only this category (full name or last part)")]
IncludePresent = Annotated[bool, QueryParam(description="also the categories the scene already shows "
                                            "(after the missing ones); default: left out")]
ProductIds = Annotated[list[str], QueryParam(min_length=1, max_length=MAX_PRODUCTS,
                                             description="a catalogue product id; repeat for several")]


def at_most(name: str, value: int, limit: int) -> None:
    """The settings' upper bounds, refused with the words of the lower bounds' validation (422)."""
    if value > limit:
        raise ApiError(422, f"{name}: Input should be less than or equal to {limit} (got {value!r})")


def resolve(service: Service, names: list[str]) -> list[str]:
    try:
        return list(dict.fromkeys(service.retriever.resolve_category(n) for n in names))
    except RetrievalError as exc:
        raise ApiError(422, str(exc)) from None


async def read_upload(service: Service, image: UploadFile) -> tuple[bytes, str]:
    limit = service.settings.max_upload_bytes
    name = image.filename or "upload"
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"image {name!r} is over the limit of {limit:,} bytes (--max-upload-mb)")
    if not data:
        raise ApiError(400, f"image {name!r} is empty (0 bytes)")
    return data, name


async def run(service: Service, image: UploadFile, group: tuple, answer: Callable, render: Callable) -> Response:
    """Queue the scene for the executor (batched with others of the same `group`), render its result as JSON."""
    data, name = await read_upload(service, image)
    try:
        future = service.executor.submit(Query(image=data, answer=answer, group=group))
    except QueueFull as exc:
        raise ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
    except ServiceStopped as exc:
        raise ApiError(503, str(exc), {"Retry-After": "5"}) from None
    try:
        done = await asyncio.wrap_future(future)
    except ImageError as exc:
        reason = str(exc).removeprefix("<bytes>: ")
        raise ApiError(415 if reason == "not an image" else 400, f"image {name!r}: {reason}") from None
    except RetrievalError as exc:
        raise ApiError(422, str(exc)) from None
    except ServiceStopped as exc:
        raise ApiError(503, str(exc), {"Retry-After": "5"}) from None
    except CtlError as exc:
        log.error("query failed: %s", exc)
        raise ApiError(500, " ".join(str(exc).split())) from None
    body = render(done.result, name)
    service.images.remember(done.version, body)     # the page asks for these products' images next
    timing = ", ".join(f"{stage};dur={1e3 * s:.2f}" for stage, s in done.timings.items())
    return JSONResponse(body, headers={"Server-Timing": timing, "X-Index-Version": done.version or "flat"})


@router.post("/look", summary="The whole look: the top k products of each category")
async def look(service: ServiceDep, image: Scene, k: K = defaults.LOOK_K, candidates: Candidates = None,
               categories: Categories = None, include_present: IncludePresent = False):
    at_most("k", k, service.settings.max_k)
    if candidates is not None:
        at_most("candidates", candidates, service.settings.max_candidates)
    names = tuple(resolve(service, categories)) if categories else None
    return await run(
        service, image, ("look", k, candidates, names, include_present),
        lambda r, scenes, t: r.look_batch(scenes, k=k, categories=names and list(names), candidates=candidates,
                                          include_present=include_present, timings=t),
        lambda result, name: result.to_dict(scene=name))


@router.post("/compatibility", summary="Does each product complete the scene?")
async def compatibility(service: ServiceDep, image: Scene, product_id: ProductIds):
    ids = tuple(product_id)
    return await run(service, image, ("compatibility", ids),
                     lambda r, scenes, t: r.compatibility_batch(scenes, list(ids), timings=t),
                     lambda result, name: result.to_dict(scene=name))


@router.post("/retrieve", summary="The flat top k: nearest products of any (or one) category")
async def retrieve(service: ServiceDep, image: Scene, k: K = defaults.K, candidates: Candidates = None,
                   category: Category = None):
    at_most("k", k, service.settings.max_k)
    if candidates is not None:
        at_most("candidates", candidates, service.settings.max_candidates)
    chosen = resolve(service, [category])[0] if category else None

    def render(result, name):
        return {"scene": name, "category": result.category, "candidates": result.candidates,
                "hits": [h.to_dict() for h in result.hits]}
    return await run(service, image, ("retrieve", k, candidates, chosen),
                     lambda r, scenes, t: r.retrieve_batch(scenes, k=k, candidates=candidates, category=chosen,
                                                           timings=t),
                     render)
