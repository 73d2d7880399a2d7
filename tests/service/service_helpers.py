"""Helpers of the service tests: an upload, a JSON error, a gate that holds the model thread, waits with a deadline."""
from __future__ import annotations

import threading
import time


def files(world, i=0):
    return {"image": (f"s{i}.jpg", world.scenes[i].read_bytes(), "image/jpeg")}


class Gate:
    """Serve a retriever whose forward waits until the test opens the gate (to hold a worker busy)."""

    def __init__(self, client, retriever):
        self.entered, self.opened, self.batches = threading.Event(), threading.Event(), []
        gated_retriever = retriever.with_index(retriever.index)
        encode = gated_retriever.scenes_from_pixels

        def gated(pixels, images, **kwargs):
            self.batches.append(len(images))
            self.entered.set()
            assert self.opened.wait(30), "the test never opened the gate"
            return encode(pixels, images, **kwargs)
        gated_retriever.scenes_from_pixels = gated
        client.app.state.service.executor.swap(gated_retriever)

    def hold(self, executor, client, *args, **kwargs):
        """Send the request that occupies the worker; return its future once the worker holds it."""
        future = executor.submit(client.post, *args, **kwargs)
        assert self.entered.wait(30)
        return future


def wait_for(predicate, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def watcher_checks(client) -> list:
    """The results of the index watcher's checks from now on, as they happen: a test waits for some to have
    run (wait_for) instead of sleeping for as long as it guesses they take."""
    swapper, results = client.app.state.service.swapper, []
    check = swapper.check

    def counted(**kwargs):
        result = check(**kwargs)
        results.append(result)
        return result
    swapper.check = counted   # the watcher thread calls self.check(): the instance attribute
    return results


def upload(path_or_bytes, name="scene.jpg", content_type="image/jpeg"):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return {"image": (name, data, content_type)}


def assert_error(response, status, *fragments):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"status", "error", "message"} and body["status"] == status
    assert "Traceback" not in response.text
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
    return body
