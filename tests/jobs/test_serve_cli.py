"""`ctl serve`'s start-up through click's runner: one-line errors before anything listens, and its examples."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.cli import main
from jobs.data.sample import generate
from jobs.serve import folder_examples, listen, resolve_examples, run_examples

ROOT = Path(__file__).resolve().parents[2]


def serve(*args):
    return CliRunner().invoke(main, ["serve", "--port", "0", *args])


def assert_one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ctl serve: error:"), err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err


def test_missing_index_or_checkpoint(world, tmp_path):
    assert_one_line_error(serve("--index-dir", str(tmp_path / "none"), "--checkpoint", str(world.checkpoint)), 1,
                          "does not exist")
    assert_one_line_error(serve("--index-dir", str(world.index_dir), "--checkpoint", str(tmp_path / "x.pt")), 1,
                          "x.pt")


def test_a_taken_port(world):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--port", str(port), "--index-dir", str(world.index_dir),
                                           "--checkpoint", str(world.checkpoint)])
    assert_one_line_error(result, 2, f"cannot listen on 127.0.0.1:{port}")


def test_bad_flags(world, tmp_path):
    base = ["--index-dir", str(world.index_dir), "--checkpoint", str(world.checkpoint)]
    assert_one_line_error(serve(*base, "--examples", str(tmp_path / "nowhere")), 2, "--examples", "not a folder")
    for flag, value in (("--threads", "0"), ("--max-batch", "0"), ("--decode-threads", "0"), ("--queue-size", "0"),
                        ("--device", "tpu"), ("--max-upload-mb", "0"), ("--stage1", "local")):
        result = serve(*base, flag, value)
        assert result.exit_code == 2 and flag in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_examples_are_the_runs_held_out_test_scenes(tmp_path):
    data = tmp_path / "sample"
    generate(data, seed=0, scenes=4, products=12, categories=3, image_size=32, workers=1, progress=False)
    scenes = sorted(p.stem for p in (data / "images" / "scenes").glob("*.jpg"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "split.json").write_text(json.dumps({"train": scenes[:2], "val": [], "test": scenes[2:]}))
    (run / "config.json").write_text(json.dumps({"data": str(data)}))
    found = run_examples(run / "checkpoint.pt")
    assert [p.stem for p in found] == scenes[2:] and all(p.is_file() for p in found)
    assert resolve_examples("auto", run / "checkpoint.pt") == found
    assert resolve_examples("none", run / "checkpoint.pt") == ()
    assert run_examples(tmp_path / "elsewhere" / "checkpoint.pt") == ()           # no run data: no examples
    (run / "config.json").write_text(json.dumps({"data": str(tmp_path / "gone")}))
    assert run_examples(run / "checkpoint.pt") == ()


def test_folder_examples(tmp_path):
    for name in ("b.jpg", "a.PNG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in folder_examples(tmp_path)] == ["a.PNG", "b.jpg"]
    with pytest.raises(Exception, match="not a folder"):
        folder_examples(tmp_path / "b.jpg")


def test_the_listening_socket_says_tcp():
    # asyncio sets TCP_NODELAY on accepted sockets only when the listening socket's proto is TCP; without it
    # every keep-alive answer waited ~40 ms for the client's delayed ACK (measured: /healthz 44 ms -> 1.5 ms).
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_queries_in_flight_are_answered_on_sigterm(world, tmp_path):  # noqa: F811
    """SIGTERM while queries wait for decoding and the model: every one of them is answered 200, then the
    process ends cleanly (uvicorn drains the connections before the executor stops)."""
    rng = np.random.default_rng(0)
    big = io.BytesIO()       # a large noisy JPEG: its decode keeps the queries in flight for a while
    Image.fromarray(rng.integers(0, 256, (1200, 1200, 3), dtype=np.uint8)).save(big, "JPEG", quality=95)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "jobs.cli", "serve", "--port", "0", "--device", "cpu", "--index-dir",
           str(world.index_dir), "--checkpoint", str(world.checkpoint), "--examples", "none",
           "--watch-interval", "0", "--no-access-log", "--decode-threads", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stderr:
            log.append(line)
            if line.startswith("serving http://"):
                started.set()
    threading.Thread(target=read, daemon=True).start()
    try:
        assert started.wait(120), "".join(log)
        url = re.match(r"serving (http://\S+) ", next(x for x in log if x.startswith("serving"))).group(1)
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, "ready")

        def post(_):
            return httpx.post(f"{url}/v1/retrieve", files={"image": ("big.jpg", big.getvalue(), "image/jpeg")},
                              timeout=120).status_code
        with ThreadPoolExecutor(6) as ex:
            answers = ex.map(post, range(6))
            wait_until(lambda: queue_depth(url) >= 3, "three queries in flight")
            proc.send_signal(signal.SIGTERM)
            assert list(answers) == [200] * 6
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code in (0, -signal.SIGTERM) and "Traceback" not in "".join(log), "".join(log)


def queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^ctl_queue_depth (\S+)$", text, re.M).group(1))


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
