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


def test_the_server_keeps_freed_memory_unless_told_not_to(world, monkeypatch):
    import jobs.serve
    applied, served = [], []
    monkeypatch.setattr(jobs.serve, "keep_freed_memory", lambda: applied.append(True) or True)
    monkeypatch.setattr(jobs.serve, "_serve", lambda *args, **kwargs: served.append(args))
    base = ["--index-dir", str(world.index_dir), "--checkpoint", str(world.checkpoint), "--examples", "none"]
    assert serve(*base).exit_code == 0 and applied == [True] and len(served) == 1
    assert serve(*base, "--release-freed-memory").exit_code == 0 and applied == [True] and len(served) == 2


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
    # A noisy 1,400 px PNG decodes in ~70 ms on one thread (a PNG has no reduced-size draft decode), so twelve
    # queries stay admitted for most of a second. Six 1,200 px JPEGs (~30 ms each) left a window the /metrics
    # poll could miss on a CI machine (it timed out there once).
    big = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (1400, 1400, 3), dtype=np.uint8)).save(big, "PNG")
    queries = 12
    proc, url, log = start_serve(world, "--decode-threads", "1")
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, "ready")

        def post(_):
            return httpx.post(f"{url}/v1/retrieve", files={"image": ("big.png", big.getvalue(), "image/png")},
                              timeout=120).status_code
        with ThreadPoolExecutor(queries) as ex:
            answers = ex.map(post, range(queries))
            wait_until(lambda: queue_depth(url) >= 3, "three queries in flight")
            proc.send_signal(signal.SIGTERM)
            assert list(answers) == [200] * queries
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


def start_serve(world, *flags) -> tuple[subprocess.Popen, str, list[str]]:
    """`ctl serve FLAGS` in its own process on the world's index; (process, url, its log lines so far and to come)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "jobs.cli", "serve", "--port", "0", "--device", "cpu", "--index-dir",
           str(world.index_dir), "--checkpoint", str(world.checkpoint), "--examples", "none",
           "--watch-interval", "0", "--no-access-log", *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stderr:
            log.append(line)
            if line.startswith("serving http://"):
                started.set()
    threading.Thread(target=read, daemon=True).start()
    if not started.wait(180):
        proc.kill()
        raise AssertionError("".join(log))
    url = re.match(r"serving (http://\S+) ", next(x for x in log if x.startswith("serving"))).group(1)
    return proc, url, log


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").glob("*/children") for c in task.read_text().split()]


def front_end_pids(pid: int) -> list[int]:
    """The server's front-end processes (its other child is multiprocessing's resource tracker)."""
    return [c for c in children(pid) if "multiprocessing.spawn" in Path(f"/proc/{c}/cmdline").read_bytes().decode()
            and "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes().decode()]


def test_front_end_processes_answer_as_one_process_and_stop_on_sigterm(world, retriever):
    """--frontends 2: the server says it is one once every front end is ready, answers as the in-process retriever
    (the forward in the model process, both stages in a front end), counts every front end's requests in /metrics,
    answers what it admitted on SIGTERM, and leaves no process behind."""
    proc, url, log = start_serve(world, "--frontends", "2", "--decode-threads", "1", "--max-batch", "1")
    try:
        assert "2 front-end processes feeding one model executor" in "".join(log)
        fronts = front_end_pids(proc.pid)
        assert len(fronts) == 2, fronts
        for pid in fronts:   # the slots: anonymous shared memory mapped by each front end
            assert "memfd:ctl-forward-slot" in Path(f"/proc/{pid}/maps").read_text()
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200
        model = ready.json()["model_process"]     # where this front end's forwards run
        assert model["pid"] == proc.pid and model["frontends"] == 2 and model["traced"] and model["device"] == "cpu"
        assert model["frontend"] in (0, 1)
        want = retriever.retrieve(retriever.encode_scene(world.scenes[0]), k=5)
        for _ in range(4):                       # whichever front end takes the connection
            answer = httpx.post(f"{url}/v1/retrieve", params={"k": 5}, timeout=60,
                                files={"image": ("s.jpg", world.scenes[0].read_bytes(), "image/jpeg")})
            assert answer.status_code == 200, answer.text
            hits = answer.json()["hits"]
            assert [h["product_id"] for h in hits] == [h.product_id for h in want.hits]
            assert [h["score"] for h in hits] == pytest.approx([h.score for h in want.hits], abs=1e-4)
        for _ in range(4):   # whichever front end answers the scrape, it counts every front end's requests
            text = httpx.get(f"{url}/metrics").text
            answered = re.search(r'^ctl_requests_total\{method="POST",route="/v1/retrieve",status="200"\} (\S+)$',
                                 text, re.M)
            assert answered and float(answered.group(1)) == 4, text
            assert re.search(r"^ctl_queue_capacity 128\.0$", text, re.M), text      # 2 front ends x 64
            assert 'ctl_index_info{' in text and re.search(r"^ctl_index_products 21\.0$", text, re.M), text

        def post(_):
            return httpx.post(f"{url}/v1/retrieve", files={"image": ("s.jpg", world.scenes[1].read_bytes(),
                                                                    "image/jpeg")}, timeout=120).status_code
        # The model process stopped, queries pile up in the front ends waiting for their forwards (4 held by the
        # 2 x 2 model threads, one scene each, the other 4 queued); SIGTERM then reaches it first: it must keep
        # forwarding until every front end has answered what it admitted.
        os.kill(proc.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(8) as ex:
            answers = ex.map(post, range(8))
            wait_until(lambda: queue_depth(url) >= 4, "queries queued behind the stopped model process")
            proc.send_signal(signal.SIGTERM)
            os.kill(proc.pid, signal.SIGCONT)
            assert list(answers) == [200] * 8
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0 and "Traceback" not in "".join(log), "".join(log)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in fronts), "the front ends to be gone", 10)


def test_a_front_end_that_dies_stops_the_server_with_one_line(world):
    proc, url, log = start_serve(world, "--frontends", "2", "--decode-threads", "1")
    try:
        victim = front_end_pids(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    errors = [line for line in log if "error:" in line]
    assert code == 1 and len(errors) == 1, "".join(log)
    assert re.search(r"front-end process ctl-serve-frontend-\d exited with code -9", errors[0]), errors
    assert "Traceback" not in "".join(log)
