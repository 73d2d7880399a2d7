"""Operations: GET /healthz, /readyz (after the warm-up only), /metrics, and the token-guarded admin reload."""
# No `from __future__ import annotations` here: FastAPI reads the endpoints' parameter annotations at run time.
import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response

from common import defaults
from service.errors import ApiError, error_response
from service.state import API_VERSION, ServiceDep, model_info

router = APIRouter()


@router.post(f"/{API_VERSION}/admin/reload", summary="Load the index directory's current build now")
async def reload(service: ServiceDep, authorization: Annotated[str | None, Header()] = None):
    token = service.settings.reload_token
    if not token:
        raise ApiError(404, "admin reload is disabled: start the server with --reload-token "
                            "(or CTL_RELOAD_TOKEN) to enable it")
    expected = f"Bearer {token}".encode()
    if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
        raise ApiError(401, "admin reload needs the header 'Authorization: Bearer <token>' with the "
                            "server's token", {"WWW-Authenticate": "Bearer"})
    result = await asyncio.to_thread(service.swapper.check, retry_refused=True)
    if result.result == "refused":
        return error_response(409, result.message, result=result.result, version=result.version)
    return result.to_dict()


@router.get("/healthz", summary="The process is alive")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Model and index loaded, every batch shape warmed, the executor taking queries")
async def readyz(service: ServiceDep):
    r, ex = service.retriever, service.executor
    flat = r.candidate_count(defaults.K)     # what a query that names no `candidates` re-ranks, and why
    look = max((r.candidate_count(defaults.LOOK_K, category=c).count for c in r.index.categories), default=0)
    state = {
        "index_version": r.index.version, "products": r.index.n, "categories": len(r.categories),
        "checkpoint_sha256": r.checkpoint.sha256, "device": str(r.device), "model": model_info(r),
        "threads": ex.threads, "batch_threads": ex.batch_threads, "model_threads": ex.model_threads,
        "max_batch": ex.max_batch, "buckets": list(ex.buckets), "pipeline": ex.pipeline,
        "decode_threads": ex.decode_threads, "traced": r.traced, "stage1": r.stage1,
        "default_candidates": {"retrieve": flat.count, "look": look, "why": flat.reason},
        "warm_up": {"batch_sizes": list(ex.warmed_sizes), "seconds": ex.warmup_seconds},
        "queue": {"depth": ex.depth(), "capacity": ex.queue_size},
        "last_reload_error": service.swapper.last_error,
    }
    if r.forward_elsewhere is not None:     # ctl serve --frontends: this front end's forwards run in the model process
        state["model_process"] = r.forward_elsewhere
    if not ex.ready:
        status = "warming up" if ex.running else "not ready"
        return JSONResponse({"status": status, **state}, status_code=503, headers={"Retry-After": "1"})
    return {"status": "ready", **state}


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(service: ServiceDep):
    return Response(service.metrics.exposition(), media_type=service.metrics.content_type)
