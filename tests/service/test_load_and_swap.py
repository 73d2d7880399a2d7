"""Under load and while the index changes: the bounded queue (503 + Retry-After), micro-batching, hot swaps with
requests in flight, and new builds that must be refused while the old one keeps serving."""
from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from index.layout import FILES, INDEX_FILE, publish
from index.store import ProductIndex
from pipeline.images import load_image
from service.settings import ServeSettings, usable_cores
from tests.retrieval.world import N_PRODUCTS, build_test_index, write_embedding_shard
from tests.service.service_helpers import Gate, files, wait_for, watcher_checks

TOKEN = "s3cret-token"


# -- the queue ------------------------------------------------------------------------------------------

def test_a_full_queue_answers_503_with_retry_after(serve, served_retriever, world):
    client = serve(queue_size=1)
    gate = Gate(client, served_retriever)
    with ThreadPoolExecutor(2) as ex:
        running = gate.hold(ex, client, "/v1/retrieve", files=files(world))     # the one worker is busy
        waiting = ex.submit(client.post, "/v1/retrieve", files=files(world))
        wait_for(lambda: client.app.state.service.executor.depth() == 1, what="the second query to queue")
        refused = client.post("/v1/retrieve", files=files(world))
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "busy" in refused.json()["message"] and "1 scene queries are waiting" in refused.json()["message"]
        assert client.get("/readyz").json()["queue"] == {"depth": 1, "capacity": 1}
        assert "ctl_queue_depth 1.0" in client.get("/metrics").text
        gate.opened.set()
        assert running.result().status_code == 200 and waiting.result().status_code == 200
    text = client.get("/metrics").text
    assert 'route="/v1/retrieve",status="503"} 1.0' in text and "ctl_rejected_total 1.0" in text


def test_micro_batching_answers_each_query_as_alone(serve, served_retriever, world, retriever):
    client = serve(max_batch=8)
    gate = Gate(client, served_retriever)
    with ThreadPoolExecutor(5) as ex:
        first = gate.hold(ex, client, "/v1/retrieve", params={"k": 5}, files=files(world, 0))
        rest = [ex.submit(client.post, "/v1/retrieve", params={"k": 5}, files=files(world, i % 2))
                for i in range(1, 5)]
        wait_for(lambda: client.app.state.service.executor.depth() == 4, what="four queued queries")
        gate.opened.set()
        answers = [first.result()] + [f.result() for f in rest]
    assert gate.batches == [1, 4]                          # the four that waited went through one forward
    wants = [retriever.retrieve(load_image(scene), k=5) for scene in world.scenes]
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        want = wants[i % 2]
        assert [h["product_id"] for h in r.json()["hits"]] == [h.product_id for h in want]
        np.testing.assert_allclose([h["hybrid_distance"] for h in r.json()["hits"]],
                                   [h.hybrid_distance for h in want], atol=5e-5)
    text = client.get("/metrics").text
    assert "ctl_batch_size_count 2.0" in text and "ctl_batch_size_sum 5.0" in text


def test_a_bad_image_fails_alone_without_waiting_for_the_model(serve, served_retriever, world):
    client = serve(max_batch=4)
    gate = Gate(client, served_retriever)
    with ThreadPoolExecutor(3) as ex:
        first = gate.hold(ex, client, "/v1/retrieve", files=files(world))
        good = ex.submit(client.post, "/v1/retrieve", files=files(world, 1))
        bad = ex.submit(client.post, "/v1/retrieve", files={"image": ("x.txt", b"text", "text/plain")})
        # The bad upload is refused by the decode pool while the model is busy: it never waits for a batch.
        assert bad.result(timeout=30).status_code == 415
        wait_for(lambda: client.app.state.service.executor.depth() == 1, what="the good query to queue")
        gate.opened.set()
        assert first.result().status_code == 200 and good.result().status_code == 200


def test_settings_per_device():
    cpu = ServeSettings.for_device("cpu")
    assert cpu.threads == 1 == cpu.batch_threads and cpu.model_threads == usable_cores()
    assert cpu.max_batch >= 1 and not cpu.pad_batches and not cpu.pipeline
    gpu = ServeSettings.for_device(torch.device("cuda"))
    assert gpu.max_batch > 1 and gpu.pad_batches and gpu.pipeline and gpu.model_threads == 1
    assert ServeSettings.for_device("cpu", max_batch=8, threads=None).max_batch == 8
    with pytest.raises(TypeError, match="unknown settings"):
        ServeSettings.for_device("cpu", batch=4)


# -- hot swaps -------------------------------------------------------------------------------------------

def publish_new_build(world, served_retriever, index_dir, tmp_path, *, prefix="new-", sha256=None):
    """A new build of `index_dir`: the same products and vectors under other ids (answers show the swap)."""
    emb = served_retriever.index.embeddings(np.arange(N_PRODUCTS))
    out = tmp_path / f"emb-{prefix}{sha256 or ''}"
    write_embedding_shard(out, [f"{prefix}{p}" for p in world.product_ids], world.categories,
                          [world.root / "images" / f"{p}.png" for p in world.product_ids], emb,
                          sha256 or world.sha256)
    build_test_index(out, index_dir)


def ids(response):
    return [h["product_id"] for h in response.json()["hits"]]


def test_hot_swap_with_requests_in_flight(serve, served_retriever, world, index_copy, tmp_path):
    client = serve(max_batch=4, index_dir=index_copy, watch_interval_s=0.05)
    stop, results = threading.Event(), [[] for _ in range(3)]

    def fire(i):
        while not stop.is_set():
            r = client.post("/v1/retrieve", params={"k": 3}, files=files(world, i % 2))
            results[i].append((r.status_code, r.headers.get("x-index-version"), ids(r) if r.status_code == 200
                               else r.text))

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(len(r) >= 2 for r in results), what="answers from the first build")
        publish_new_build(world, served_retriever, index_copy, tmp_path)      # v000002, pointer moved
        wait_for(lambda: all(r and r[-1][1] == "v000002" for r in results), what="answers from the new build")
        wait_for(lambda: all(sum(v == "v000002" for _, v, _ in r) >= 2 for r in results), what="more answers")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    for answers in results:
        assert all(status == 200 for status, _, _ in answers), [a for a in answers if a[0] != 200][:3]
        versions = [v for _, v, _ in answers]
        switched = versions.index("v000002")
        assert switched >= 1 and set(versions[:switched]) == {"v000001"}
        assert set(versions[switched:]) == {"v000002"}                       # never back to the old build
        for _, version, hit_ids in answers:
            assert all(p.startswith("new-") == (version == "v000002") for p in hit_ids)
    assert client.get("/readyz").json()["index_version"] == "v000002"
    text = client.get("/metrics").text
    assert 'ctl_index_reloads_total{result="swapped"} 1.0' in text and "ctl_index_version 2.0" in text
    assert client.get("/v1/categories").json()["index_version"] == "v000002"
    assert client.get(f"/v1/products/new-{world.product_ids[0]}/image").status_code == 200
    assert client.get(f"/v1/products/{world.product_ids[0]}/image").status_code == 404


def corrupt_copy(index_dir, source: str, name: str, damage) -> None:
    """Publish `name`, a copy of build `source` damaged by `damage(folder)`."""
    shutil.copytree(index_dir / source, index_dir / name)
    damage(index_dir / name)
    publish(index_dir, index_dir / name)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: truncate(d / INDEX_FILE), "index.faiss"),
    (lambda d: truncate(d / "embeddings.f16.npy"), "mmap length is greater than file size"),
    (lambda d: (d / "ids.arrow").write_bytes(b"ARROW1 garbage"), "ids.arrow"),
    (lambda d: (d / "embeddings.f16.npy").unlink(), "lacks embeddings.f16.npy"),
], ids=["index", "embeddings", "ids", "missing-file"])
def test_a_corrupt_new_build_is_refused_and_the_old_keeps_serving(serve, world, index_copy, damage, fragment):
    client = serve(index_dir=index_copy, watch_interval_s=0.05)
    before = client.post("/v1/retrieve", params={"k": 4}, files=files(world))
    corrupt_copy(index_copy, "v000001", "v000002", damage)
    wait_for(lambda: client.get("/readyz").json()["last_reload_error"] is not None, what="the refusal")
    error = client.get("/readyz").json()["last_reload_error"]
    assert f"new index build {index_copy / 'v000002'} refused: " in error
    assert fragment in error and "still serving v000001" in error
    after = client.post("/v1/retrieve", params={"k": 4}, files=files(world))
    assert after.status_code == 200 and after.headers["x-index-version"] == "v000001"
    assert ids(after) == ids(before)
    checks = watcher_checks(client)                      # the watcher does not retry the same build:
    wait_for(lambda: len(checks) >= 3, what="three more watcher checks")
    assert [c.result for c in checks[:3]] == ["refused"] * 3
    assert 'ctl_index_reloads_total{result="refused"} 1.0' in client.get("/metrics").text


def test_a_garbled_pointer_is_refused_once(serve, world, index_copy):
    client = serve(index_dir=index_copy, watch_interval_s=0.05)
    (index_copy / "CURRENT").write_text("../../etc\n")
    wait_for(lambda: client.get("/readyz").json()["last_reload_error"] is not None, what="the refusal")
    assert "cannot read the index directory" in client.get("/readyz").json()["last_reload_error"]
    checks = watcher_checks(client)
    wait_for(lambda: len(checks) >= 3, what="three more watcher checks")
    assert [c.result for c in checks[:3]] == ["refused"] * 3
    assert 'ctl_index_reloads_total{result="refused"} 1.0' in client.get("/metrics").text
    r = client.post("/v1/retrieve", params={"k": 2}, files=files(world))
    assert r.status_code == 200 and r.headers["x-index-version"] == "v000001"


def test_a_build_from_another_checkpoint_is_refused(serve, served_retriever, world, index_copy, tmp_path):
    client = serve(index_dir=index_copy, watch_interval_s=0.05)
    publish_new_build(world, served_retriever, index_copy, tmp_path, sha256="f" * 64)
    wait_for(lambda: client.get("/readyz").json()["last_reload_error"] is not None, what="the refusal")
    error = client.get("/readyz").json()["last_reload_error"]
    assert "built from checkpoint sha256 ffff" in error and "still serving v000001" in error
    r = client.post("/v1/retrieve", params={"k": 2}, files=files(world))
    assert r.status_code == 200 and not any(p.startswith("new-") for p in ids(r))
    # a good build after the bad one is taken
    publish_new_build(world, served_retriever, index_copy, tmp_path, prefix="fixed-")
    wait_for(lambda: client.get("/readyz").json()["index_version"] == "v000003", what="the good build")
    assert client.get("/readyz").json()["last_reload_error"] is None
    assert all(p.startswith("fixed-") for p in ids(client.post("/v1/retrieve", files=files(world))))


def test_admin_reload(serve, served_retriever, world, index_copy, tmp_path):
    off = serve(index_dir=index_copy)
    r = off.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404 and "--reload-token" in r.json()["message"]

    client = serve(index_dir=index_copy, reload_token=TOKEN)          # no watcher: only the endpoint swaps
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = client.post("/v1/admin/reload", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/v1/admin/reload", headers=auth).json()["result"] == "unchanged"
    publish_new_build(world, served_retriever, index_copy, tmp_path)
    assert client.get("/readyz").json()["index_version"] == "v000001"       # not watched
    r = client.post("/v1/admin/reload", headers=auth)
    assert r.status_code == 200 and r.json() == {"result": "swapped", "version": "v000002",
                                                 "message": f"now serving v000002 ({N_PRODUCTS} products)"}
    assert all(p.startswith("new-") for p in ids(client.post("/v1/retrieve", files=files(world))))
    corrupt_copy(index_copy, "v000002", "v000003", lambda d: truncate(d / INDEX_FILE))
    r = client.post("/v1/admin/reload", headers=auth)
    assert r.status_code == 409 and r.json()["result"] == "refused" and r.json()["version"] == "v000002"
    assert "still serving v000002" in r.json()["message"]


def test_a_rebuilt_flat_directory_is_swapped_by_its_info_json(serve, served_retriever, world, tmp_path):
    # The layout before versions: the four files directly in the folder (info.json written last).
    flat = tmp_path / "flat"
    shutil.copytree(world.index_dir / "v000001", flat)
    client = serve(retriever=served_retriever.with_index(ProductIndex.load(flat)), index_dir=flat,
                   watch_interval_s=0.05)
    assert client.get("/readyz").json()["index_version"] is None
    publish_new_build(world, served_retriever, tmp_path / "versioned", tmp_path)
    for name in FILES:   # info.json last
        shutil.copyfile(tmp_path / "versioned" / "v000001" / name, flat / (name + ".tmp"))
        (flat / (name + ".tmp")).replace(flat / name)
    wait_for(lambda: ids(client.post("/v1/retrieve", params={"k": 2}, files=files(world)))[0].startswith("new-"),
             what="the rebuilt flat index")
    assert 'ctl_index_reloads_total{result="swapped"} 1.0' in client.get("/metrics").text
