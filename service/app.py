"""The HTTP API and the page: a thin FastAPI layer over one Retriever (all retrieval logic stays in retrieval/).

    POST /v1/look                    multipart field `image`; ?k=&candidates=&categories=&include_present=  the look
    POST /v1/retrieve                multipart field `image`; ?k=&candidates=&category=        the flat top-k
    POST /v1/compatibility           multipart field `image`; ?product_id=... (repeat)  does each product complete it
    GET  /v1/categories              the index's categories and their product counts, what the model learnt from
    GET  /v1/products/{id}/image     a catalogue image, looked up by product id
    GET  /v1/examples, /v1/examples/{n}   the example scenes the page offers
    POST /v1/admin/reload            load the index directory's current build now (only with a token)
    GET  /healthz, /readyz, /metrics alive; model, index and warm-up done; Prometheus text
    GET  /                           the page (service/static)

The routes live in scene_routes, catalogue_routes and operations; errors (always JSON) in errors; the
upload cap and request metrics in middleware. Every error is ``{"status", "error", "message"}``.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from PIL import Image

from retrieval.retriever import Retriever
from service import catalogue_routes, operations, scene_routes
from service.errors import install_error_handlers
from service.executor import ModelExecutor, power_buckets
from service.metrics import ServiceMetrics
from service.middleware import RequestMetrics, UploadLimit
from service.product_images import ProductImages
from service.settings import ServeSettings
from service.state import API_VERSION, Service
from service.swap import IndexSwapper


def create_executor(retriever: Retriever, settings: ServeSettings, metrics: ServiceMetrics) -> ModelExecutor:
    return ModelExecutor(retriever, threads=settings.threads, batch_threads=settings.batch_threads,
                         max_batch=settings.max_batch,
                         queue_size=settings.queue_size, decode_threads=settings.decode_threads,
                         buckets=power_buckets(settings.max_batch) if settings.pad_batches else (),
                         pipeline=settings.pipeline, model_threads=settings.model_threads,
                         exact_decode=settings.exact_decode, metrics=metrics)


def create_app(retriever: Retriever, index_dir: str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The service over a loaded retriever; its model executor and index watcher run while the app does.

    With settings.trace (the default) the retriever's backbone is traced in place (Retriever.trace_backbone).
    """
    settings = settings or ServeSettings.for_device(retriever.device)
    if settings.trace:
        retriever.trace_backbone()    # runs without the GIL between layers: decoding and HTTP go on beside it
    metrics = ServiceMetrics()
    executor = create_executor(retriever, settings, metrics)
    # The swap's canary query: a grey scene through both stages of every new build before it is served.
    canary = retriever.encode_scene(Image.new("RGB", (retriever.input_size, retriever.input_size), (128, 128, 128)))
    swapper = IndexSwapper(executor, index_dir, canary=canary, interval_s=settings.watch_interval_s, metrics=metrics)
    service = Service(executor=executor, swapper=swapper, metrics=metrics, settings=settings, images=ProductImages())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        executor.start()               # warms up in its own thread: /readyz says ready once it is done
        swapper.start()
        try:
            yield
        finally:
            swapper.stop()
            await asyncio.to_thread(executor.stop)

    app = FastAPI(title="Complete the Look", version=API_VERSION, lifespan=lifespan, redoc_url=None,
                  summary="Scene-based complementary product recommendation")
    app.state.service = service
    install_error_handlers(app)
    for module in (scene_routes, catalogue_routes, operations):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=catalogue_routes.STATIC_DIR), name="static")
    fixed = {getattr(r, "path", "") for r in app.routes if "{" not in getattr(r, "path", "{")}
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, fixed_paths=fixed)
    return app
