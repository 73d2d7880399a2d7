"""The HTTP API through FastAPI's test client: every endpoint, its answers against Retriever, every bad input."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import defaults
from index.store import ProductIndex
from pipeline.images import load_image, load_scene
from service.product_images import ProductImageError, ProductImages
from service.state import SAMPLE_MODEL_NOTICE
from tests.helpers import photo, png_header
from tests.retrieval.world import CATEGORIES, PER_CATEGORY
from tests.service.service_helpers import assert_error, upload

HIT_FIELDS = {"rank", "product_id", "category", "score", "hybrid_distance", "global_distance", "local_distance",
              "image", "metadata"}


def assert_same_hits(api_hits, hits):
    """The API's hits are Hit.to_dict() of the library's, distances to float rounding (a traced backbone, other
    thread counts)."""
    assert [h["product_id"] for h in api_hits] == [h.product_id for h in hits]
    for got, hit in zip(api_hits, hits, strict=True):
        want = hit.to_dict()
        assert set(got) == HIT_FIELDS
        assert {k: got[k] for k in ("rank", "product_id", "category", "image", "metadata")} == \
               {k: want[k] for k in ("rank", "product_id", "category", "image", "metadata")}
        for key in ("score", "hybrid_distance", "global_distance", "local_distance"):
            assert got[key] == pytest.approx(want[key], abs=5e-5)   # traced backbone: rounding


# -- operations ----------------------------------------------------------------------------------------

def test_health_ready_and_metrics(serve, world):
    client = serve()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["products"] == len(world.product_ids)
    assert body["index_version"] == "v000001" and body["checkpoint_sha256"] == world.sha256
    assert body["queue"] == {"depth": 0, "capacity": 64} and body["last_reload_error"] is None
    assert body["stage1"] == "hybrid"     # what stage 1 searches the index by (ctl serve --stage1)
    assert "model_process" not in body     # one process: the forward runs here (ctl serve --frontends 1)
    # a query naming no `candidates` re-ranks the retriever's own count (here k + margin capped at the world's size)
    want = min(defaults.K + max(defaults.K, defaults.CANDIDATES_EXACT_MARGIN), len(world.product_ids))
    assert body["default_candidates"]["retrieve"] == want
    assert "exact" in body["default_candidates"]["why"]
    client.post("/v1/look", files=upload(world.scenes[0]))
    client.post("/v1/look", files=upload(b"not an image", "a.txt", "text/plain"))
    text = client.get("/metrics").text
    assert 'ctl_requests_total{method="POST",route="/v1/look",status="200"} 1.0' in text
    assert 'ctl_requests_total{method="POST",route="/v1/look",status="415"} 1.0' in text
    assert 'ctl_requests_total{method="GET",route="/readyz",status="200"} 1.0' in text
    for stage in ("queue", "decode", "forward", "stage1", "stage2"):
        assert f'ctl_stage_seconds_count{{stage="{stage}"}} 1.0' in text, stage
    assert 'ctl_request_seconds_count{route="/v1/look"} 2.0' in text
    assert "ctl_queue_depth 0.0" in text and "ctl_queue_capacity 64.0" in text
    assert f"ctl_index_products {float(len(world.product_ids))}" in text
    assert "ctl_index_version 1.0" in text and 'version="v000001"' in text
    assert 'ctl_index_reloads_total{result="refused"} 0.0' in text


def test_readyz_is_503_when_the_executor_is_stopped(serve):
    client = serve()
    client.app.state.service.executor.stop()
    assert client.get("/readyz").json()["status"] == "not ready"
    assert client.get("/readyz").status_code == 503
    r = client.post("/v1/look", files=upload(png_header(4, 4)))
    assert_error(r, 503, "not running")


def test_categories(client):
    body = client.get("/v1/categories").json()
    assert body["index_version"] == "v000001" and body["products"] == PER_CATEGORY * len(CATEGORIES)
    assert body["categories"] == [{"category": c, "name": c, "products": PER_CATEGORY} for c in sorted(CATEGORIES)]
    assert body["model"] == {"training_data": "unknown", "notice": None}    # an older checkpoint: no notice


def test_a_model_trained_on_the_sample_says_so(serve, served_retriever):
    client = serve()
    sample = served_retriever.with_index(served_retriever.index)
    sample.checkpoint = dataclasses.replace(sample.checkpoint,
                                            extra={**sample.checkpoint.extra, "training_data": {"kind": "sample"}})
    client.app.state.service.executor.swap(sample)
    model = client.get("/v1/categories").json()["model"]
    assert model["training_data"] == "sample" and model["notice"] == SAMPLE_MODEL_NOTICE
    assert "rendered looks" in model["notice"] and "ctl data stl" in model["notice"]
    assert client.get("/readyz").json()["model"]["training_data"] == "sample"
    page = client.get("/static/app.js").text
    assert "model-notice" in page and "model-notice" in client.get("/").text


def test_the_page_and_its_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needed in ('id="scene-input"', 'id="heatmap"', 'id="rows"', 'id="error"', "/static/app.js"):
        assert needed in page.text
    assert "drawHeatmap" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/v1/look" in client.get("/openapi.json").json()["paths"]


# -- answers equal the library's ----------------------------------------------------------------------

@pytest.mark.parametrize("params", [{}, {"k": 5, "candidates": 8}, {"k": 3, "category": "HAT"},
                                    {"k": 50, "candidates": 2}, {"k": 2}])
def test_retrieve_equals_retriever_retrieve(client, world, params, retriever):
    r = client.post("/v1/retrieve", params=params, files=upload(world.scenes[1], "s1.jpg"))
    assert r.status_code == 200, r.text
    body = r.json()
    kwargs = {"k": params.get("k", 20), "candidates": params.get("candidates"), "category": params.get("category")}
    want = retriever.retrieve(load_image(world.scenes[1]), **kwargs)
    assert body["scene"] == "s1.jpg" and body["category"] == want.category
    assert body["candidates"] == want.candidates
    if params == {"k": 2}:     # no count asked for: the retriever's own (k + margin on the test's exact index)
        assert body["candidates"] == retriever.candidate_count(2).count < len(retriever)
    assert_same_hits(body["hits"], want.hits)
    assert r.headers["x-index-version"] == "v000001"
    assert [part.split(";")[0] for part in r.headers["server-timing"].split(", ")] == \
           ["queue", "decode", "forward", "stage1", "stage2"]


@pytest.mark.parametrize("k, candidates", [(4, 200), (2, 3), (7, 7)])
def test_look_per_category_equals_retrieve_with_that_category(client, world, k, candidates, retriever):
    scene = world.scenes[0]
    r = client.post("/v1/look", params={"k": k, "candidates": candidates}, files=upload(scene, "s0.jpg"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scene"] == "s0.jpg"
    assert [c["category"] for c in body["categories"]] == sorted(CATEGORIES)
    image = load_image(scene)
    want = retriever.look(image, k=k, candidates=candidates)
    for got, look in zip(body["categories"], want, strict=True):
        assert set(got) == {"category", "present", "presence_probability", "attention", "hits"}
        assert got["present"] == look.present and got["presence_probability"] == look.presence_probability
        np.testing.assert_allclose(got["attention"], look.attention, atol=5e-5)
        assert_same_hits(got["hits"], retriever.retrieve(
            image, k=k, candidates=candidates, category=got["category"]).hits)
        flat = client.post("/v1/retrieve", params={"k": k, "candidates": candidates, "category": got["category"]},
                           files=upload(scene)).json()
        assert [h["product_id"] for h in flat["hits"]] == [h["product_id"] for h in got["hits"]]


def test_look_over_chosen_categories(client, world):
    r = client.post("/v1/look", params=[("categories", "HAT"), ("categories", "shoes"), ("k", "2")],
                     files=upload(world.scenes[1]))
    assert r.status_code == 200, r.text
    cats = r.json()["categories"]
    assert [c["category"] for c in cats] == ["hat", "shoes"] and all(len(c["hits"]) == 2 for c in cats)


def test_any_image_format_and_mode(client, world):
    img = load_image(world.scenes[0]).convert("RGBA")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    r = client.post("/v1/retrieve", params={"k": 2}, files=upload(buf.getvalue(), "scene.png", "image/png"))
    assert r.status_code == 200 and len(r.json()["hits"]) == 2


# -- catalogue images and examples ----------------------------------------------------------------------

def test_product_image_by_id(client, world):
    pid = world.product_ids[3]
    r = client.get(f"/v1/products/{pid}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (world.root / "images" / f"{pid}.png").read_bytes()
    assert_error(client.get("/v1/products/nope/image"), 404, "no product 'nope' in the index")


def test_the_images_of_an_answer_are_served_without_scanning_the_catalogue(serve, world):
    client = serve()
    images = client.app.state.service.images
    look = client.post("/v1/look", params={"k": 2, "include_present": True}, files=upload(world.scenes[0])).json()
    answered = [h["product_id"] for c in look["categories"] for h in c["hits"]]
    for pid in answered:
        r = client.get(f"/v1/products/{pid}/image")
        assert r.status_code == 200 and r.content == (world.root / "images" / f"{pid}.png").read_bytes()
    assert images.scans == 0
    other = next(p for p in world.product_ids if p not in answered)
    assert client.get(f"/v1/products/{other}/image").status_code == 200 and images.scans == 1
    assert client.get(f"/v1/products/{other}/image").status_code == 200 and images.scans == 1   # remembered


def test_remembered_images_are_bounded_and_an_evicted_one_is_found_again(world):
    images = ProductImages(capacity=2)
    index = ProductIndex.load(world.index_dir)
    first, second, third = world.product_ids[:3]
    paths = {pid: str(world.root / "images" / f"{pid}.png") for pid in (first, second, third)}
    images.remember(index.version, {"hits": [{"product_id": p, "image": paths[p]} for p in (first, second, third)]})
    assert images.path(index, third) == Path(paths[third]) and images.path(index, second) == Path(paths[second])
    assert images.scans == 0
    assert images.path(index, first) == Path(paths[first]) and images.scans == 1       # evicted: found by a scan
    with pytest.raises(ProductImageError, match="no product 'nope' in the index"):
        images.path(index, "nope")
    other_version = {"hits": [{"product_id": first, "image": None}]}
    images.remember("v999999", other_version)     # another build's answer does not change this one's
    assert images.path(index, first) == Path(paths[first])


@pytest.mark.parametrize("path", ["/v1/products/../../etc/passwd/image", "/v1/products/..%2F..%2Fetc%2Fpasswd/image",
                                  "/v1/products/%2Fetc%2Fpasswd/image", "/v1/products//etc/passwd/image"])
def test_no_client_path_reaches_the_file_system(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "root:" not in r.text
    assert r.json()["status"] == 404


def test_examples(serve, client, world):
    with_examples = serve(examples=tuple(world.scenes))
    listed = with_examples.get("/v1/examples").json()["examples"]
    assert [e["name"] for e in listed] == [p.name for p in world.scenes]
    assert with_examples.get(listed[1]["url"]).content == world.scenes[1].read_bytes()
    assert_error(with_examples.get("/v1/examples/2"), 404, "no example 2; there are 2")
    assert_error(with_examples.get("/v1/examples/-1"), 404)
    assert client.get("/v1/examples").json() == {"examples": []}


# -- bad input: JSON, the right status, a message naming the problem -----------------------------------

def jpeg_bytes(world) -> bytes:
    return world.scenes[0].read_bytes()


@pytest.mark.parametrize("route", ["/v1/look", "/v1/retrieve"])
def test_bad_images(client, world, route):
    data = jpeg_bytes(world)
    assert_error(client.post(route, files=upload(b"hello, I am text\n", "notes.txt", "text/plain")), 415,
                 "image 'notes.txt': not an image")
    assert_error(client.post(route, files=upload(data[: len(data) // 2], "half.jpg")), 400,
                 "image 'half.jpg': truncated image")
    assert_error(client.post(route, files=upload(b"", "empty.jpg")), 400, "image 'empty.jpg' is empty (0 bytes)")
    assert_error(client.post(route, files=upload(png_header(100_000, 100_000), "bomb.png", "image/png")), 400,
                 "image 'bomb.png': decompression bomb")
    assert_error(client.post(route, files=upload(png_header(9_000, 9_000), "huge.png", "image/png")), 400,
                 "9000x9000 pixels exceeds the 64,000,000 pixel limit")
    assert_error(client.post(route), 422, "image: Field required", "multipart/form-data field 'image'")
    assert_error(client.post(route, files={"photo": ("a.jpg", data, "image/jpeg")}), 422, "image: Field required")
    assert_error(client.post(route, content=b"raw bytes", headers={"content-type": "image/jpeg"}), 422, "image")


def test_oversize_upload_is_413(serve, world):
    data = jpeg_bytes(world)
    client = serve(max_upload_bytes=len(data) - 1)
    assert_error(client.post("/v1/look", files=upload(data)), 413,
                 f"over the limit of {len(data) - 1:,} bytes")
    big = bytes(len(data) + 200_000)            # past the multipart slack too: refused before parsing
    body = assert_error(client.post("/v1/look", files=upload(big)), 413, "upload is", "the limit is")
    assert "--max-upload-mb" in body["message"]

    def chunks():                               # no Content-Length: counted while reading
        yield b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
        for _ in range(10):
            yield bytes(50_000)
    r = client.post("/v1/look", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(r, 413, "upload is over the limit")


@pytest.mark.parametrize("route", ["/v1/look", "/v1/retrieve"])
@pytest.mark.parametrize("params, fragment", [
    ({"k": 0}, "k: Input should be greater than or equal to 1"),
    ({"k": 101}, "k: Input should be less than or equal to 100"),
    ({"k": "two"}, "k: Input should be a valid integer"),
    ({"candidates": 0}, "candidates: Input should be greater than or equal to 1"),
    ({"candidates": 10_001}, "candidates: Input should be less than or equal to 10000"),
])
def test_k_and_candidates_out_of_range_are_422(client, world, route, params, fragment):
    assert_error(client.post(route, params=params, files=upload(jpeg_bytes(world))), 422, fragment)


def test_unknown_category_is_422(client, world):
    assert_error(client.post("/v1/retrieve", params={"category": "scarf"}, files=upload(jpeg_bytes(world))), 422,
                 "unknown category 'scarf'; known: handbag, hat, shoes")
    assert_error(client.post("/v1/look", params=[("categories", "hat"), ("categories", "scarf")],
                             files=upload(jpeg_bytes(world))), 422, "unknown category 'scarf'")


def test_unknown_routes_and_methods_are_json(client):
    assert_error(client.get("/v2/look"), 404, "no such endpoint: GET /v2/look")
    assert_error(client.get("/v1/look"), 405, "Method Not Allowed")


def test_an_unexpected_failure_is_a_json_500_without_a_trace(serve, served_retriever, world):
    client = serve(raise_server_exceptions=False)
    broken = served_retriever.with_index(served_retriever.index)

    def fail(*args, **kwargs):
        raise RuntimeError("secret internals")
    broken.look_batch = fail
    client.app.state.service.executor.swap(broken)
    body = assert_error(client.post("/v1/look", files=upload(jpeg_bytes(world))), 500, "internal error")
    assert "secret" not in body["message"]
    assert client.post("/v1/retrieve", files=upload(jpeg_bytes(world))).status_code == 200


def test_rgb_and_grey_uploads_agree_with_the_library(client, world, retriever):
    grey = load_image(world.scenes[1]).convert("L")
    buf = io.BytesIO()
    grey.save(buf, "PNG")
    r = client.post("/v1/retrieve", params={"k": 4}, files=upload(buf.getvalue(), "grey.png", "image/png"))
    assert_same_hits(r.json()["hits"], retriever.retrieve(Image.open(io.BytesIO(buf.getvalue())), k=4).hits)


@pytest.mark.parametrize("exact_decode", [False, True])
def test_a_phone_size_jpeg_is_decoded_as_load_scene_decodes_it(serve, retriever, exact_decode):
    """By default a large JPEG is DCT-scaled while decoding (pipeline.images.load_scene); --exact-decode
    decodes it in full. Each way the answer is the library's for that decode, and the two ways differ."""
    data = photo(2000, 1840)
    client = serve(exact_decode=exact_decode)
    assert client.app.state.service.executor.exact_decode is exact_decode
    r = client.post("/v1/retrieve", params={"k": 6}, files=upload(data, "phone.jpg"))
    assert r.status_code == 200, r.text
    want = retriever.retrieve(load_scene(data, retriever.input_size, exact=exact_decode), k=6)
    other = retriever.retrieve(load_scene(data, retriever.input_size, exact=not exact_decode), k=6)
    assert_same_hits(r.json()["hits"], want.hits)
    with pytest.raises(AssertionError):
        assert_same_hits(r.json()["hits"], other.hits)
