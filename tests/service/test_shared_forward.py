"""The forward shared across processes (ctl serve --frontends N), both sides in one process: remote answers equal the
local forward's, requests from several front ends go through one forward, padding never leaks, failures are answered."""
from __future__ import annotations

import threading

import pytest
import torch

from pipeline.images import image_to_tensor, load_image
from retrieval.results import RetrievalError
from retrieval.retriever import Retriever
from service.executor import ServiceStopped
from service.shared_forward import ForwardFailed, ForwardServer, ForwardShape, ForwardUnavailable, RemoteForward
from tests.service.service_helpers import files


@pytest.fixture(scope="module")
def pixels(world, retriever):
    """Six different scenes as the service resizes them (6 x 3 x S x S uint8): the world's first, then noise, so
    that a row answered to the wrong request or position shows."""
    size = retriever.input_size
    first = image_to_tensor(load_image(world.scenes[0]), size)
    noise = torch.randint(0, 256, (5, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return torch.cat([first[None], noise])


class Recorder:
    """A forward that records each call's rows and pad_to and can be held at its start."""

    def __init__(self, forward):
        self.forward = forward
        self.calls: list[tuple[int, int | None]] = []
        self.entered, self.opened = threading.Event(), threading.Event()
        self.opened.set()
        self.fail_next = False

    def __call__(self, pixels, *, pad_to=None):
        self.calls.append((int(pixels.shape[0]), pad_to))
        self.entered.set()
        assert self.opened.wait(30), "the test never let the forward go on"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device lost")
        return self.forward(pixels, pad_to=pad_to)


def started(forward, retriever, *, frontends=1, slots=2, rows=4, buckets=()):
    shape = ForwardShape.of(retriever.encode_pixels, rows=rows, size=retriever.input_size)
    server = ForwardServer(forward, shape, frontends=frontends, slots=slots, buckets=buckets)
    server.start()
    remotes = [RemoteForward(handles) for handles in server.handles]
    return server, remotes


def close(server, remotes):
    for remote in remotes:
        remote.close()
    server.close()


def assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        if b is None:
            assert a is None
        else:
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_the_remote_forward_equals_the_local_one_at_every_batch_size(retriever, pixels):
    recorder = Recorder(retriever.encode_pixels)
    server, (remote,) = started(recorder, retriever, rows=4)
    try:
        for n in (1, 3, 4, 6):             # 6 > a slot's 4 rows: sent in two parts, answered in order
            assert_same(remote.encode_pixels(pixels[:n]), retriever.encode_pixels(pixels[:n]))
        assert [rows for rows, _ in recorder.calls] == [1, 3, 4, 4, 2]
    finally:
        close(server, [remote])


def test_a_lone_request_runs_at_once_with_no_other_rows(retriever, pixels):
    """No batching window: each call alone is one forward of its own rows, whatever the slot could hold."""
    recorder = Recorder(retriever.encode_pixels)
    server, (remote,) = started(recorder, retriever, rows=8)
    try:
        for j in range(3):
            remote.encode_pixels(pixels[j:j + 1])
        assert recorder.calls == [(1, None)] * 3 and server.batches == 3
    finally:
        close(server, [remote])


def test_requests_of_two_front_ends_wait_together_and_go_through_one_padded_forward(retriever, pixels):
    """While one forward is held, a request of each of two front ends piles up; they then run as one forward of
    3 rows padded to 4, and each front end gets its own rows (the padding row leaks into neither)."""
    recorder = Recorder(retriever.encode_pixels)
    server, remotes = started(recorder, retriever, frontends=2, rows=4, buckets=(1, 2, 4))
    try:
        recorder.opened.clear()
        results: dict[str, tuple] = {}
        first = threading.Thread(target=lambda: results.update(first=remotes[0].encode_pixels(pixels[:1])))
        first.start()
        assert recorder.entered.wait(30)
        a = threading.Thread(target=lambda: results.update(a=remotes[0].encode_pixels(pixels[1:3])))
        b = threading.Thread(target=lambda: results.update(b=remotes[1].encode_pixels(pixels[3:4])))
        a.start()
        b.start()
        deadline = threading.Event()
        for _ in range(300):                     # both requests received by the model process's side
            if len(server._pending) == 2:        # noqa: SLF001 - the queue the test waits on
                break
            deadline.wait(0.01)
        assert len(server._pending) == 2         # noqa: SLF001
        recorder.opened.set()
        for thread in (first, a, b):
            thread.join(30)
        assert recorder.calls == [(1, 1), (3, 4)] and server.batches == 2
        assert_same(results["first"], retriever.encode_pixels(pixels[:1]))
        assert_same(results["a"], retriever.encode_pixels(pixels[1:3]))
        assert_same(results["b"], retriever.encode_pixels(pixels[3:4]))
    finally:
        recorder.opened.set()
        close(server, remotes)


def test_a_failed_forward_is_answered_and_the_next_one_runs(retriever, pixels):
    recorder = Recorder(retriever.encode_pixels)
    server, (remote,) = started(recorder, retriever)
    try:
        recorder.fail_next = True
        with pytest.raises(ForwardFailed, match="device lost"):     # a 500, as in one process
            remote.encode_pixels(pixels[:2])
        assert_same(remote.encode_pixels(pixels[:2]), retriever.encode_pixels(pixels[:2]))
    finally:
        close(server, [remote])


def test_a_model_process_that_is_gone_is_a_clear_error(retriever, pixels):
    server, (remote,) = started(retriever.encode_pixels, retriever)
    server.close()
    try:
        with pytest.raises(ForwardUnavailable, match="gone") as raised:
            remote.encode_pixels(pixels[:1])
        assert isinstance(raised.value, ServiceStopped)              # answered 503 + Retry-After by the routes
    finally:
        remote.close()


def test_a_retriever_using_a_remote_forward_answers_as_the_local_one(world, retriever):
    """Retriever.use_forward: the whole scene path (forward remote, both stages here) equals the local retriever,
    and a retriever made by with_index keeps the remote forward."""
    server, (remote,) = started(retriever.encode_pixels, retriever)
    try:
        front = retriever.with_index(retriever.index)
        front.use_forward(remote.encode_pixels)
        calls = server.batches
        scene = front.encode_scene(world.scenes[0])
        assert server.batches == calls + 1
        want = retriever.retrieve(retriever.encode_scene(world.scenes[0]), k=5)
        got = front.retrieve(scene, k=5)
        assert [h.product_id for h in got.hits] == [h.product_id for h in want.hits]
        swapped = front.with_index(retriever.index)
        swapped.encode_scene(world.scenes[1])
        assert server.batches == calls + 2
        retriever.encode_scene(world.scenes[1])       # the local retriever is untouched
        assert server.batches == calls + 2
    finally:
        close(server, [remote])


def test_a_front_end_answers_503_when_its_model_process_is_gone(serve, served_retriever, world):
    """Through the service: a forward that cannot reach the model process is a 503 with Retry-After (come back),
    not a 500; /readyz of such a front end says where its forwards ran."""
    server, (remote,) = started(served_retriever.encode_pixels, served_retriever)
    try:
        front = served_retriever.with_index(served_retriever.index)
        front.use_forward(remote.encode_pixels, about={"device": "cpu", "frontends": 1})
        client = serve(retriever=front, max_batch=2)
        assert client.get("/readyz").json()["model_process"] == {"device": "cpu", "frontends": 1}
        assert client.post("/v1/retrieve", files=files(world)).status_code == 200
        server.close()
        answer = client.post("/v1/retrieve", files=files(world))
        assert answer.status_code == 503 and "Retry-After" in answer.headers, answer.text
        assert "model process is gone" in answer.json()["message"]
    finally:
        remote.close()
        server.close()


def test_a_front_end_drops_the_backbone_it_never_runs(world, retriever):
    """Its own retriever (drop_backbone frees the embedder's backbone, which with_index shares): the answers stay
    those of the local retriever, and the backbone cannot be dropped where the forward still runs here."""
    server, (remote,) = started(retriever.encode_pixels, retriever)
    front = Retriever.load(checkpoint=world.checkpoint, index_dir=world.index_dir)
    try:
        with pytest.raises(RetrievalError, match="use_forward"):
            front.drop_backbone()
        front.use_forward(remote.encode_pixels)
        front.drop_backbone()
        assert front.embedder.backbone is None and not front.traced
        want = retriever.look(retriever.encode_scene(world.scenes[0]), k=3)
        got = front.look(front.encode_scene(world.scenes[0]), k=3)
        assert [[h.product_id for h in c.hits] for c in got.categories] == \
            [[h.product_id for h in c.hits] for c in want.categories]
    finally:
        close(server, [remote])
