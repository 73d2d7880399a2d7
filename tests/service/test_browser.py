"""The page in a real browser: `ctl serve` in its own process on a free loopback port, driven through Debian's
Chromium by Playwright (never a downloaded browser).

Upload a scene through the file input, wait for the rows, check the product cards of every category and the
heatmap, pick another category and see the heatmap change, try an example, upload a text file and see the
error, and save a screenshot. By default on the tests' tiny random-weight world; with
CTL_BROWSER_ARTEFACTS=demo on the demo's artefacts (`make demo`), and CTL_SCREENSHOT=PATH keeps the
screenshot (the README's docs/serve_page.png is made so).
"""
from __future__ import annotations

import ctypes
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from common import defaults
from jobs.serve import run_examples

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CTL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_SECONDS = 120

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is a test dependency (pip install -e '.[dev]')")
if not CHROMIUM.is_file():
    if os.environ.get("CTL_REQUIRE_BROWSER"):
        raise RuntimeError(f"CTL_REQUIRE_BROWSER is set but {CHROMIUM} is missing (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


def _die_with_parent():  # the server must not outlive a killed test run
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def artefacts(world, tmp_path_factory):
    """(checkpoint, index dir, examples folder or 'auto')."""
    if os.environ.get("CTL_BROWSER_ARTEFACTS") == "demo":
        checkpoint, index_dir = ROOT / defaults.CHECKPOINT, ROOT / defaults.INDEX_DIR
        if not checkpoint.is_file() or not index_dir.is_dir():
            pytest.skip("the demo's artefacts are missing (make demo)")
        return checkpoint, index_dir, "auto"
    examples = tmp_path_factory.mktemp("examples")
    for scene in world.scenes:
        shutil.copy(scene, examples)
    return world.checkpoint, world.index_dir, str(examples)


@pytest.fixture(scope="module")
def server(artefacts, tmp_path_factory):
    """`ctl serve --port 0` in a process of its own; stopped with SIGTERM (a graceful shutdown) at the end."""
    checkpoint, index_dir, examples = artefacts
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "jobs.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
           "--index-dir", str(index_dir), "--checkpoint", str(checkpoint), "--examples", examples,
           "--watch-interval", "0", "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def read():
        for line in proc.stderr:
            log.append(line)
            lines.put(line)
    threading.Thread(target=read, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=START_SECONDS)
            except queue.Empty:
                raise AssertionError(f"ctl serve did not start in {START_SECONDS}s: {''.join(log)}") from None
            match = re.match(r"serving (http://127\.0\.0\.1:\d+) ", line)
            if match:
                break
            assert proc.poll() is None, f"ctl serve exited: {''.join(log)}"
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    # uvicorn shuts down gracefully, then re-raises the signal it caught: exit status -SIGTERM
    assert code in (0, -signal.SIGTERM), f"ctl serve did not stop cleanly (exit {code}): {''.join(log)[-2000:]}"
    assert "Application shutdown complete" in "".join(log) and "Traceback" not in "".join(log), "".join(log)


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                       headless=True, args=CHROMIUM_FLAGS,
                                                       viewport={"width": 1280, "height": 1100})
        context.set_default_timeout(60_000)
        try:
            yield context.new_page()
        finally:
            context.close()


HEATMAP = "document.querySelector('#heatmap').toDataURL()"
INKED = """() => { const c = document.querySelector('#heatmap');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let alpha = 0; for (let i = 3; i < d.length; i += 4) alpha += d[i]; return alpha; }"""


def test_the_page_completes_a_look(server, page, artefacts, world, tmp_path):
    page.goto(server)
    page.wait_for_selector("#category-list input")
    categories = page.eval_on_selector_all("#category-list input", "boxes => boxes.map(b => b.value)")
    counts = page.evaluate("fetch('/v1/categories').then(r => r.json())")["categories"]
    assert categories == [c["category"] for c in counts] and categories

    # upload a scene through the file input
    scene = world.scenes[0] if artefacts[2] != "auto" else run_examples(artefacts[0])[0]   # a held-out scene
    page.set_input_files("#scene-input", str(scene))
    page.wait_for_selector("body[data-state=done]")
    rows = page.eval_on_selector_all(".row", "rows => rows.map(r => r.dataset.category)")
    assert rows == categories
    k = int(page.input_value("#k"))
    for c in counts:
        cards = page.locator(f'.row[data-category="{c["category"]}"] .card')
        assert cards.count() == min(k, c["products"])
        title = cards.first.get_attribute("title")
        assert "score" in title and "global d_g" in title and "local d_l" in title
    page.wait_for_function("() => [...document.querySelectorAll('.card img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")

    # the heatmap of the first category, then of another
    assert page.get_attribute("#heatmap", "data-category") == categories[0]
    assert page.evaluate(INKED) > 0
    first = page.evaluate(HEATMAP)
    page.click(f'.row[data-category="{categories[1]}"] .row-head')
    page.wait_for_function(f"() => document.querySelector('#heatmap').dataset.category === {categories[1]!r}")
    assert page.evaluate(HEATMAP) != first
    assert page.locator(".row.selected").get_attribute("data-category") == categories[1]
    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("CTL_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["CTL_SCREENSHOT"])

    # an example scene: a click asks for its look
    name = page.get_attribute(".example >> nth=1", "title")
    page.click(".example >> nth=1")
    page.wait_for_function("name => document.body.dataset.state === 'done' && "
                           "document.querySelector('#status').textContent.startsWith(name + ':')", arg=name)
    assert page.locator(".row").count() == len(categories)

    # a text file: the error is shown in the page
    page.set_input_files("#scene-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                 "buffer": b"hello, I am text\n"}])
    page.wait_for_selector("#error:not([hidden])")
    assert "image 'notes.txt': not an image (HTTP 415)" in page.inner_text("#error")
    assert page.get_attribute("body", "data-state") == "error"
