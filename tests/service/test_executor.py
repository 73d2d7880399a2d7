"""The model executor: batches form from what is ready without a window (a fake clock), padded batches answer as
one request does, and /readyz says ready only once every batch shape has been warmed."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.executor import ModelExecutor, Query, bucket_for, power_buckets
from tests.service.service_helpers import Gate, files, wait_for


class FakeClock:
    """Time stands still unless the test moves it; every wait is recorded, and `arrive` runs inside it."""

    def __init__(self):
        self.time, self.waits, self.arrive = 100.0, 0, None

    def now(self) -> float:
        return self.time

    def wait(self, condition) -> None:
        self.waits += 1
        assert self.arrive is not None, "the executor waited with a query ready"
        arrive, self.arrive = self.arrive, None
        condition.release()          # a query arrives from elsewhere while the executor waits
        try:
            arrive()
        finally:
            condition.acquire()


def decoded(executor: ModelExecutor, clock: FakeClock) -> Query:
    q = Query(image=b"", answer=lambda r, scenes, t: [None] * len(scenes), enqueued=clock.now())
    q.timings["decode"] = 0.0
    with executor._cond:
        executor._admitted += 1
    return q


@pytest.fixture
def fake(served_retriever):
    clock = FakeClock()
    return clock, ModelExecutor(served_retriever, threads=1, max_batch=4, queue_size=16, clock=clock)


def test_a_lone_query_is_taken_at_once(fake):
    clock, executor = fake
    q = decoded(executor, clock)
    executor.put_ready(q)
    assert executor.take() == [q]                  # no wait: FakeClock.wait would have failed the test
    assert clock.waits == 0 and q.timings["queue"] == 0.0 and executor.depth() == 0


def test_with_nothing_ready_the_executor_waits_only_for_the_first_query(fake):
    clock, executor = fake
    q = decoded(executor, clock)
    clock.arrive = lambda: executor.put_ready(q)
    assert executor.take() == [q]                  # woken by the one arrival, it goes at once
    assert clock.waits == 1 and q.timings["queue"] == 0.0


def test_what_piles_up_behind_a_batch_goes_in_one_batch_of_at_most_max_batch(fake):
    clock, executor = fake
    waiting = [decoded(executor, clock) for _ in range(6)]
    for q in waiting:
        executor.put_ready(q)
    clock.time += 0.25                             # they waited while a batch was in flight
    assert executor.take() == waiting[:4] and executor.take() == waiting[4:]
    assert clock.waits == 0 and {q.timings["queue"] for q in waiting} == {0.25}



def test_the_model_thread_that_went_idle_last_takes_a_lone_query(served_retriever):
    """Last in, first out: at low concurrency one thread keeps the queries (and its core's caches)."""
    executor = ModelExecutor(served_retriever, threads=1, max_batch=4, queue_size=16)
    taken: dict[str, list] = {}

    def idle(name: str) -> threading.Thread:
        t = threading.Thread(target=lambda: taken.setdefault(name, executor.take()), name=name)
        t.start()
        return t

    earlier = idle("earlier")
    wait_for(lambda: len(executor._idle) == 1, what="the first thread waiting")
    later = idle("later")
    wait_for(lambda: len(executor._idle) == 2, what="the second thread waiting")
    q = decoded(executor, FakeClock())
    executor.put_ready(q)
    later.join(10)
    assert taken == {"later": [q]} and earlier.is_alive() and len(executor._idle) == 1
    executor._stop.set()
    executor._wake_every_idle_thread()             # stopping wakes the one still idle, with nothing
    earlier.join(10)
    assert taken == {"later": [q], "earlier": []} and executor._idle == []

def recording_decodes(executor: ModelExecutor) -> list[str]:
    """The names of the threads that decode the executor's uploads, in order."""
    names, decode = [], executor._decoded

    def recorded(query):
        names.append(threading.current_thread().name)
        return decode(query)
    executor._decoded = recorded
    return names


def test_a_query_that_finds_a_model_thread_idle_is_decoded_there(served_retriever, world):
    """One hand-over fewer at low load: the idle model thread decodes the scene it is about to run; the answer is
    the one the decode pool's path gives, and a bad upload is still answered alone, the thread going on."""
    executor = ModelExecutor(served_retriever, threads=1, max_batch=4, queue_size=16)
    names = recording_decodes(executor)
    executor.start()
    try:
        assert executor.warm.wait(60)
        wait_for(lambda: len(executor._idle) == 1, what="the model thread idle after its warm-up")

        def ask(image: bytes):
            return executor.submit(Query(image=image, answer=lambda r, scenes, t: r.retrieve_batch(scenes, k=5)))
        here = ask(world.scenes[0].read_bytes()).result(30)
        assert names == ["model-executor"] and "decode" in here.timings
        wait_for(lambda: len(executor._idle) == 1, what="the model thread idle again")   # after answering
        with pytest.raises(Exception, match="not an image"):
            ask(b"not an image at all").result(30)
        assert names == ["model-executor"] * 2
        wait_for(lambda: len(executor._idle) == 1, what="the model thread idle again")
        with executor._cond:                       # as if a batch were in flight: the decode pool decodes
            idle, executor._idle = executor._idle, []
        pooled = ask(world.scenes[0].read_bytes())
        wait_for(lambda: len(names) == 3, what="the pool's decode")
        with executor._cond:
            executor._idle = idle
            executor._idle.pop().notify()
        got = pooled.result(30)
        assert names[2].startswith("decode") and executor.depth() == 0
        assert [h.product_id for h in got.result.hits] == [h.product_id for h in here.result.hits]
    finally:
        executor.stop()


def assert_same_hits(got: list[dict], want: list[dict]) -> None:
    """The same products in the same order, distances to float rounding (a batch may take other kernels)."""
    assert [h["product_id"] for h in got] == [h["product_id"] for h in want]
    assert [h["hybrid_distance"] for h in got] == pytest.approx([h["hybrid_distance"] for h in want], abs=1e-5)


def test_buckets():
    assert power_buckets(64) == (1, 2, 4, 8, 16, 32, 64) and power_buckets(6) == (1, 2, 4, 6)
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert bucket_for(3, ()) is None


def test_padded_batches_answer_as_one_request_does(serve, served_retriever, world):
    client = serve(max_batch=8, pad_batches=True)
    alone = {(i, route): client.post(route, params={"k": 5}, files=files(world, i)).json()
             for i in (0, 1) for route in ("/v1/retrieve", "/v1/look")}
    gate = Gate(client, served_retriever)
    asks = [(i % 2, "/v1/retrieve" if i < 3 else "/v1/look") for i in range(5)]   # two groups in one batch
    with ThreadPoolExecutor(6) as ex:
        first = gate.hold(ex, client, "/v1/retrieve", params={"k": 5}, files=files(world, 0))
        rest = [ex.submit(client.post, route, params={"k": 5}, files=files(world, i)) for i, route in asks]
        wait_for(lambda: client.app.state.service.executor.depth() == 5, what="five queued queries")
        gate.opened.set()
        answers = [f.result() for f in rest]
    assert_same_hits(first.result().json()["hits"], alone[(0, "/v1/retrieve")]["hits"])
    assert gate.batches == [1, 5]                  # the five went through one forward, padded to 8
    for (i, route), r in zip(asks, answers, strict=True):
        assert r.status_code == 200, r.text
        got, want = r.json(), alone[(i, route)]
        if route == "/v1/retrieve":
            assert_same_hits(got["hits"], want["hits"])
        else:
            assert [c["category"] for c in got["categories"]] == [c["category"] for c in want["categories"]]
            for a, b in zip(got["categories"], want["categories"], strict=True):
                assert_same_hits(a["hits"], b["hits"])


def test_ready_only_after_every_batch_shape_is_warmed(serve, served_retriever, world):
    gated = served_retriever.with_index(served_retriever.index)
    seen, entered, opened = [], threading.Event(), threading.Event()
    encode = gated.scenes_from_pixels

    def recording(pixels, images, *, pad_to=None):
        if threading.current_thread().name != "model-executor":     # create_app's canary scene
            return encode(pixels, images, pad_to=pad_to)
        seen.append(pad_to)
        entered.set()
        assert opened.wait(30), "the test never let the warm-up go on"
        return encode(pixels, images, pad_to=pad_to)
    gated.scenes_from_pixels = recording
    client = serve(retriever=gated, max_batch=8, pad_batches=True, wait_ready=False)
    assert entered.wait(30)
    warming = client.get("/readyz")
    assert warming.status_code == 503 and warming.json()["status"] == "warming up"
    with ThreadPoolExecutor(1) as ex:
        early = ex.submit(client.post, "/v1/retrieve", files=files(world))     # queued behind the warm-up
        opened.set()
        wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
        assert early.result().status_code == 200
    ready = client.get("/readyz").json()
    assert ready["warm_up"]["batch_sizes"] == [1, 2, 4, 8] == ready["buckets"]
    assert ready["warm_up"]["seconds"] > 0
    assert seen[:4] == [1, 2, 4, 8]                # every shape through the forward before the first query


def test_a_lone_scene_and_a_batch_take_their_own_thread_counts(serve, served_retriever, world):
    client = serve(threads=2, batch_threads=1, max_batch=4)
    body = client.get("/readyz").json()
    assert (body["threads"], body["batch_threads"], body["max_batch"], body["buckets"], body["pipeline"]) == \
           (2, 1, 4, [], False)
    assert body["warm_up"]["batch_sizes"] == [1, 4]
    gate = Gate(client, served_retriever)
    seen = []
    encode = gate_encode = client.app.state.service.executor.retriever.scenes_from_pixels

    def counting(pixels, images, **kwargs):
        seen.append((len(images), torch.get_num_threads()))
        return encode(pixels, images, **kwargs)
    client.app.state.service.executor.retriever.scenes_from_pixels = counting
    del gate_encode
    with ThreadPoolExecutor(4) as ex:
        first = gate.hold(ex, client, "/v1/retrieve", files=files(world, 0))
        rest = [ex.submit(client.post, "/v1/retrieve", files=files(world, 1)) for _ in range(3)]
        wait_for(lambda: client.app.state.service.executor.depth() == 3, what="three queued queries")
        gate.opened.set()
        assert all(f.result().status_code == 200 for f in [first, *rest])
    assert seen == [(1, 2), (3, 1)]


def test_two_model_threads_run_two_batches_at_once(serve, served_retriever, world):
    client = serve(max_batch=4, model_threads=2)
    assert client.get("/readyz").json()["model_threads"] == 2
    gate = Gate(client, served_retriever)
    with ThreadPoolExecutor(2) as ex:
        first = gate.hold(ex, client, "/v1/retrieve", params={"k": 5}, files=files(world, 0))
        second = ex.submit(client.post, "/v1/retrieve", params={"k": 5}, files=files(world, 1))
        # one model thread would leave the second query queued behind the held forward
        wait_for(lambda: len(gate.batches) == 2, what="the second query's forward while the first is held")
        gate.opened.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert gate.batches == [1, 1]
    alone = client.post("/v1/retrieve", params={"k": 5}, files=files(world, 1))
    assert_same_hits(second.result().json()["hits"], alone.json()["hits"])


def test_the_stages_thread_answers_as_the_model_thread_does(serve, world):
    client = serve(max_batch=4, pipeline=True)
    one = client.post("/v1/retrieve", params={"k": 5}, files=files(world, 1))
    assert one.status_code == 200
    with ThreadPoolExecutor(4) as ex:
        many = list(ex.map(lambda _: client.post("/v1/retrieve", params={"k": 5}, files=files(world, 1)), range(6)))
    for r in many:
        assert_same_hits(r.json()["hits"], one.json()["hits"])
