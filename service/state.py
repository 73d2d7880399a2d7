"""What the routes share: the running service's parts, reached through a FastAPI dependency."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from retrieval.retriever import Retriever
from service.executor import ModelExecutor
from service.metrics import ServiceMetrics
from service.product_images import ProductImages
from service.settings import ServeSettings
from service.swap import IndexSwapper

API_VERSION = "v1"

# What the page says about a model trained on the generated sample (Checkpoint.training_data == "sample");
# the README's "Try your own photo" says the same.
SAMPLE_MODEL_NOTICE = (
    "This demo model has only seen the sample's rendered looks, not real photos: on a street photo it can be "
    "wrong, even about what the scene already shows. For real photos, train on real looks: `ctl data stl` "
    "then `ctl data fetch` (README, 'Real data'), or a catalogue of your own.")


@dataclass(frozen=True)
class Service:
    """The parts of one running service."""

    executor: ModelExecutor
    swapper: IndexSwapper
    metrics: ServiceMetrics
    settings: ServeSettings
    images: ProductImages

    @property
    def retriever(self) -> Retriever:
        """The retriever being served now (a hot swap replaces it)."""
        return self.executor.retriever


async def service_of(request: Request) -> Service:
    # async: FastAPI runs a plain-def dependency on its thread pool, a thread hand-over for every request
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service_of)]


def model_info(retriever: Retriever) -> dict:
    """What the served checkpoint learnt from, and the page's notice when that is the sample."""
    kind = retriever.checkpoint.training_data
    return {"training_data": kind, "notice": SAMPLE_MODEL_NOTICE if kind == "sample" else None}
