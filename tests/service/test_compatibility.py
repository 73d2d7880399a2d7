"""`POST /v1/compatibility` and the presence-aware `/v1/look` against the library, on a world whose checkpoint has
a presence head and a calibration."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pipeline.images import load_image
from retrieval.retriever import Retriever
from service.app import create_app
from service.scene_routes import MAX_PRODUCTS
from service.settings import ServeSettings
from tests.retrieval.world import PLATT
from tests.service.service_helpers import assert_error, upload


@pytest.fixture(scope="module")
def library(presence_paths):
    ckpt, index_dir = presence_paths
    return Retriever.load(checkpoint=ckpt, index_dir=index_dir)


@pytest.fixture(scope="module")
def app_client(presence_paths):
    ckpt, index_dir = presence_paths
    app = create_app(Retriever.load(checkpoint=ckpt, index_dir=index_dir), index_dir,
                     ServeSettings(threads=1, watch_interval_s=0))
    with TestClient(app) as client:
        yield client


def test_compatibility_equals_the_library(app_client, library, world):
    ids = [world.product_ids[i] for i in (4, 0, 13)]
    r = app_client.post("/v1/compatibility", params=[("product_id", p) for p in ids],
                        files=upload(world.scenes[1], "s1.jpg"))
    assert r.status_code == 200, r.text
    body = r.json()
    want = library.compatibility(load_image(world.scenes[1]), ids).to_dict(scene="s1.jpg")
    assert set(body) == {"scene", "threshold", "products"} and body["threshold"] == PLATT.threshold
    assert body["scene"] == "s1.jpg" and [p["product_id"] for p in body["products"]] == ids
    for got, exp in zip(body["products"], want["products"], strict=True):
        assert set(got) == set(exp) and got["completes_look"] == exp["completes_look"]
        for key in ("hybrid_distance", "global_distance", "local_distance", "probability", "score"):
            assert got[key] == pytest.approx(exp[key], abs=5e-5)     # traced backbone: rounding
    assert [part.split(";")[0] for part in r.headers["server-timing"].split(", ")] == \
           ["queue", "decode", "forward", "stage2"]


def test_compatibility_refusals_are_json(app_client, world):
    scene = upload(world.scenes[0])
    assert_error(app_client.post("/v1/compatibility", params={"product_id": "nope"}, files=scene), 422,
                 "unknown product id 'nope': not in the index of 21 products")
    assert_error(app_client.post("/v1/compatibility", files=scene), 422, "product_id: Field required")
    too_many = [("product_id", world.product_ids[0])] * (MAX_PRODUCTS + 1)
    assert_error(app_client.post("/v1/compatibility", params=too_many, files=scene), 422, "product_id")
    assert_error(app_client.post("/v1/compatibility", params={"product_id": world.product_ids[0]},
                                 files=upload(b"hello\n", "notes.txt", "text/plain")), 415, "not an image")


def test_look_leaves_out_present_categories_unless_asked(app_client, library, world):
    image = load_image(world.scenes[0])
    for params, include in (({}, False), ({"include_present": "true"}, True)):
        body = app_client.post("/v1/look", params={"k": 2, **params}, files=upload(world.scenes[0])).json()
        want = library.look(image, k=2, include_present=include)
        assert [c["category"] for c in body["categories"]] == [c.category for c in want]
        assert [c["present"] for c in body["categories"]] == [c.present for c in want]
    assert [c["category"] for c in body["categories"]] == ["handbag", "hat", "shoes"]
