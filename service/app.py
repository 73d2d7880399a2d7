"""The HTTP API and the page: a thin FastAPI layer over one Retriever (all retrieval logic stays in retrieval/).

    POST /v1/look                    multipart field `image`; ?k=&candidates=&categories=&include_present=  the look
    POST /v1/retrieve                multipart field `image`; ?k=&candidates=&category=        the flat top-k
    POST /v1/compatibility           multipart field `image`; ?product_id=... (repeat)  does each product complete it
    GET  /v1/categories              the index's categories and their product counts
    GET  /v1/products/{id}/image     a catalogue image, looked up by product id
    GET  /v1/examples, /v1/examples/{n}   the example scenes the page offers
    POST /v1/admin/reload            load the index directory's current build now (only with a token)
    GET  /healthz, /readyz, /metrics alive; model and index loaded; Prometheus text
    GET  /                           the page (service/static)

Every error is JSON, ``{"status", "error", "message"}``, with the status that fits the problem.
"""
# No `from __future__ import annotations` here: FastAPI reads the endpoints' parameter annotations at run
# time, and those built inside create_app (limits from the settings) cannot be resolved from strings.
import asyncio
import hmac
import logging
import mimetypes
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from time import perf_counter
from typing import Annotated

from fastapi import FastAPI, File, Header, Request, UploadFile
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from common import defaults
from common.errors import CtlError
from pipeline.images import ImageError
from retrieval.results import RetrievalError
from retrieval.retriever import Retriever
from service.metrics import ServiceMetrics
from service.pool import ModelPool, Query, QueueFull, ServiceStopped
from service.product_images import ProductImageError, ProductImages
from service.settings import ServeSettings
from service.swap import IndexSwapper

API_VERSION = "v1"
STATIC_DIR = Path(__file__).resolve().parent / "static"
MULTIPART_SLACK = 64 * 1024            # room for the multipart envelope around an upload of the byte cap
UPLOAD_PATHS = ("/v1/look", "/v1/retrieve", "/v1/compatibility")
MAX_PRODUCTS = 100                     # product ids one compatibility request may ask about
log = logging.getLogger("ctl.serve")


class ApiError(Exception):
    """An answer other than 200: its status, a message naming the problem, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"status": status, "error": HTTPStatus(status).phrase, "message": message, **extra},
                        status_code=status, headers=headers)


# -- middleware (plain ASGI) -----------------------------------------------------------------------------

class UploadLimit:
    """Refuse an upload over the byte cap with 413 before it is parsed (by Content-Length, or while reading).

    The body of an upload route is read here, at most cap + the multipart envelope, and handed on.
    """

    def __init__(self, app, *, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in UPLOAD_PATHS:
            return await self.app(scope, receive, send)
        limit = self.max_bytes + MULTIPART_SLACK
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await self._refuse(scope, receive, send, int(length))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(scope, receive, send, None)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, length: int | None):
        said = f"{length:,} bytes" if length is not None else "over the limit"
        response = error_response(413, f"upload is {said}; the limit is {self.max_bytes:,} "
                                  "bytes for the image (--max-upload-mb)", headers={"Connection": "close"})
        await response(scope, receive, send)


class RequestMetrics:
    """Count every answer by route template and status, and time it."""

    def __init__(self, app, *, metrics: ServiceMetrics, fixed_paths: set[str]):
        self.app, self.metrics, self.fixed_paths = app, metrics, fixed_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.fixed_paths else "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(perf_counter() - start)


# -- the app -----------------------------------------------------------------------------------------------

def create_app(retriever: Retriever, index_dir: str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The service over a loaded retriever; its model workers and index watcher run while the app does.

    With settings.trace (the default) the retriever's backbone is traced in place (Retriever.trace_backbone).
    """
    settings = settings or ServeSettings.for_device(retriever.device)
    if settings.trace:
        retriever.trace_backbone()    # worker threads then forward in parallel, not in turns on the GIL
    metrics = ServiceMetrics()
    pool = ModelPool(retriever, workers=settings.workers, threads=settings.threads, max_batch=settings.max_batch,
                     max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size, metrics=metrics)
    # A warm-up forward (the first one creates the oneDNN primitives); its scene is the swap's canary query.
    canary = retriever.encode_scene(Image.new("RGB", (retriever.input_size, retriever.input_size), (128, 128, 128)))
    swapper = IndexSwapper(pool, index_dir, canary=canary, interval_s=settings.watch_interval_s, metrics=metrics)
    images = ProductImages()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.start()
        swapper.start()
        try:
            yield
        finally:
            swapper.stop()
            await asyncio.to_thread(pool.stop)

    app = FastAPI(title="Complete the Look", version=API_VERSION, lifespan=lifespan, redoc_url=None,
                  summary="Scene-based complementary product recommendation")
    app.state.pool, app.state.swapper, app.state.metrics, app.state.settings = pool, swapper, metrics, settings
    app.state.images = images

    # -- errors: always JSON, never a stack trace ------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body", "header"))
            got = f" (got {err['input']!r})" if err.get("type") != "missing" and "input" in err else ""
            hint = (" (send the scene as the multipart/form-data field 'image')"
                    if where == "image" and err.get("type") == "missing" else "")
            parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}{got}{hint}")
        return error_response(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = (f"no such endpoint: {request.method} {request.url.path}" if exc.status_code == 404
                   and exc.detail == "Not Found" else str(exc.detail))
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error (the server log has the details)")

    # -- scene queries ---------------------------------------------------------------------------------------
    async def read_upload(image: UploadFile) -> tuple[bytes, str]:
        name = image.filename or "upload"
        data = await image.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, f"image {name!r} is over the limit of {settings.max_upload_bytes:,} bytes "
                                "(--max-upload-mb)")
        if not data:
            raise ApiError(400, f"image {name!r} is empty (0 bytes)")
        return data, name

    async def run(data: bytes, name: str, answer) -> Response:
        try:
            future = pool.submit(Query(image=data, answer=answer))
        except QueueFull as exc:
            raise ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        except ServiceStopped as exc:
            raise ApiError(503, str(exc), {"Retry-After": "5"}) from None
        try:
            result = await asyncio.wrap_future(future)
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
        images.remember(result.version, result.body)     # the page asks for these products' images next
        timing = ", ".join(f"{stage};dur={1e3 * s:.2f}" for stage, s in result.timings.items())
        return JSONResponse(result.body, headers={"Server-Timing": timing,
                                                  "X-Index-Version": result.version or "flat"})

    def resolve(names: list[str]) -> list[str]:
        try:
            return list(dict.fromkeys(pool.retriever.resolve_category(n) for n in names))
        except RetrievalError as exc:
            raise ApiError(422, str(exc)) from None

    Scene = Annotated[UploadFile, File(description="the scene photo (any image format)")]
    K = Annotated[int, QueryParam(ge=1, le=settings.max_k, description="products (per category for a look)")]
    Candidates = Annotated[int, QueryParam(ge=1, le=settings.max_candidates, description="stage-1 candidates "
                                           "pulled by global distance before the exact hybrid re-rank")]
    Categories = Annotated[list[str] | None, QueryParam(description="repeat for several; default: all")]
    Category = Annotated[str | None, QueryParam(description="only this category (full name or last part)")]

    IncludePresent = Annotated[bool, QueryParam(description="also the categories the scene already shows "
                                                "(after the missing ones); default: left out")]
    ProductIds = Annotated[list[str], QueryParam(min_length=1, max_length=MAX_PRODUCTS,
                                                 description="a catalogue product id; repeat for several")]

    @app.post(f"/{API_VERSION}/look", summary="The whole look: the top k products of each category")
    async def look(image: Scene, k: K = defaults.LOOK_K, candidates: Candidates = defaults.CANDIDATES,
                   categories: Categories = None, include_present: IncludePresent = False):
        names = resolve(categories) if categories else None
        data, name = await read_upload(image)
        return await run(data, name, lambda r, scene, t: r.look(
            scene, k=k, categories=names, candidates=candidates, include_present=include_present,
            timings=t).to_dict(scene=name))

    @app.post(f"/{API_VERSION}/compatibility", summary="Does each product complete the scene?")
    async def compatibility(image: Scene, product_id: ProductIds):
        data, name = await read_upload(image)
        return await run(data, name, lambda r, scene, t: r.compatibility(scene, product_id, timings=t)
                         .to_dict(scene=name))

    @app.post(f"/{API_VERSION}/retrieve", summary="The flat top k: nearest products of any (or one) category")
    async def retrieve(image: Scene, k: K = defaults.K, candidates: Candidates = defaults.CANDIDATES,
                       category: Category = None):
        name_c = resolve([category])[0] if category else None
        data, name = await read_upload(image)

        def answer(r: Retriever, scene, t):
            result = r.retrieve(scene, k=k, candidates=candidates, category=name_c, timings=t)
            return {"scene": name, "category": result.category, "candidates": result.candidates,
                    "hits": [h.to_dict() for h in result.hits]}
        return await run(data, name, answer)

    # -- the catalogue -------------------------------------------------------------------------------------
    @app.get(f"/{API_VERSION}/categories", summary="The categories a look covers, with their product counts")
    async def categories_():
        r = pool.retriever
        found = []
        for c in r.categories:
            try:
                r.resolve_category(c)
            except RetrievalError:
                continue           # in the index but unknown to the model: a look leaves it out
            found.append({"category": c, "name": c.rsplit("|", 1)[-1], "products": len(r.index.rows_for_category(c))})
        return {"index_version": r.index.version, "products": r.index.n, "categories": found}

    @app.get(f"/{API_VERSION}/products/{{product_id}}/image", summary="A catalogue image, by product id")
    def product_image(product_id: str):
        try:
            path = images.path(pool.retriever.index, product_id)
        except ProductImageError as exc:
            raise ApiError(404, str(exc)) from None
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    @app.get(f"/{API_VERSION}/examples", summary="Example scenes for the page")
    async def examples():
        return {"examples": [{"id": i, "name": p.name, "url": f"/{API_VERSION}/examples/{i}"}
                             for i, p in enumerate(settings.examples)]}

    @app.get(f"/{API_VERSION}/examples/{{number}}", summary="One example scene")
    def example(number: int):
        if not 0 <= number < len(settings.examples):
            raise ApiError(404, f"no example {number}; there are {len(settings.examples)}")
        path = settings.examples[number]
        if not path.is_file():
            raise ApiError(404, f"example {number} is missing on the server")
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    # -- operations ------------------------------------------------------------------------------------------
    @app.post(f"/{API_VERSION}/admin/reload", summary="Load the index directory's current build now")
    async def reload(authorization: Annotated[str | None, Header()] = None):
        if not settings.reload_token:
            raise ApiError(404, "admin reload is disabled: start the server with --reload-token "
                                "(or CTL_RELOAD_TOKEN) to enable it")
        expected = f"Bearer {settings.reload_token}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise ApiError(401, "admin reload needs the header 'Authorization: Bearer <token>' with the "
                                "server's token", {"WWW-Authenticate": "Bearer"})
        result = await asyncio.to_thread(swapper.check, retry_refused=True)
        if result.result == "refused":
            return error_response(409, result.message, result=result.result, version=result.version)
        return result.to_dict()

    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Model and index are loaded and the workers take queries")
    async def readyz():
        r = pool.retriever
        state = {
            "index_version": r.index.version, "products": r.index.n, "categories": len(r.categories),
            "checkpoint_sha256": r.checkpoint.sha256, "device": str(r.device),
            "workers": pool.workers, "threads": pool.threads, "max_batch": pool.max_batch, "traced": r.traced,
            "max_wait_ms": settings.max_wait_ms, "queue": {"depth": pool.depth(), "capacity": pool.queue_size},
            "last_reload_error": swapper.last_error,
        }
        if not pool.running:
            return JSONResponse({"status": "not ready", **state}, status_code=503)
        return {"status": "ready", **state}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_():
        return Response(metrics.exposition(), media_type=metrics.content_type)

    # -- the page --------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    fixed = {getattr(r, "path", "") for r in app.routes if "{" not in getattr(r, "path", "{")}
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, fixed_paths=fixed)
    return app
