"""A real two-node Ray cluster (`ray start --head` + `ray start --address`, on 127.0.0.1): `ctl embed-catalog
--engine ray --address` joins it from another folder and embeds what the local engine embeds."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.jobs.catalog.catalogs import ROOT, SIZE, embeddings_of, make_catalog, read_shards, run

pytest.importorskip("ray", reason="the Ray extra is not installed (pip install '.[ray]')")
RAY = Path(sys.executable).parent / "ray"
CTL = Path(sys.executable).parent / "ctl"
# slow: two Ray nodes start (seconds each), then a job's workers and actors; bounded here, not only by pytest
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(not RAY.exists() or not CTL.exists(), reason="no `ray` or `ctl` beside this python")]
START_S = 120          # for a node to come up on a loaded 2-core machine
JOB_S = 400            # for the job, Ray's workers and actors included
STOP_S = 60            # `ray start --block` drains for up to 30 s on SIGTERM

# Waits until N nodes of the cluster are alive (or the deadline passes) and prints how many are.
NODES_ALIVE = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[3])
alive = lambda: sum(1 for n in ray.nodes() if n["Alive"])
while alive() < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.5)
print(alive())
"""


def free_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_flags() -> list[str]:
    """A node's own ports, all free ones: two nodes on one machine must not share any."""
    p = free_ports(6)
    return ["--node-ip-address=127.0.0.1", f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}",
            f"--dashboard-agent-listen-port={p[2]}", f"--dashboard-agent-grpc-port={p[3]}",
            f"--runtime-env-agent-port={p[4]}", f"--metrics-export-port={p[5]}", "--num-cpus=1",
            f"--object-store-memory={100 * 2**20}", "--disable-usage-stats", "--block"]


@dataclass
class Cluster:
    address: str
    env: dict          # what a client of the cluster needs: token mode, the token, the project on PYTHONPATH
    nodes: int


def wait_for_port(port: int, node: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert node.poll() is None, f"`ray start --head` exited with {node.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the head's port {port} did not open within {timeout} s")


def stop(nodes: list[subprocess.Popen], temp_dir: Path) -> None:
    """Stop the nodes this test started, and only them.

    Not `ray stop`: it stops every Ray process of the user on the machine, other test runs' local instances
    included. `ray start --block` stops its node's processes on SIGTERM; whatever is left of ours (every Ray
    process of the cluster names its temp dir on its command line) is then killed by pid."""
    for node in reversed(nodes):        # the worker node first, then the head
        try:
            os.killpg(node.pid, signal.SIGTERM)
            node.wait(STOP_S)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(10)
    for pid in ours(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ours(temp_dir: Path) -> list[int]:
    """The pids of the processes whose command line names `temp_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(temp_dir).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node, token authentication on (as `ray start` has it since Ray 2.60)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))   # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), OMP_NUM_THREADS="1",
               # the nodes' workers import the project from this tree: "installed on every node"
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    port = free_ports(1)[0]
    nodes = []
    try:
        with open(temp_dir / "head.log", "w") as log:
            nodes.append(subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                                           f"--temp-dir={temp_dir}", *node_flags()], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        wait_for_port(port, nodes[0], START_S)
        address = f"127.0.0.1:{port}"
        with open(temp_dir / "node.log", "w") as log:
            nodes.append(subprocess.Popen([RAY, "start", f"--address={address}", *node_flags()], env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        alive = subprocess.run([sys.executable, "-c", NODES_ALIVE, address, "2", str(START_S)], env=env,
                               capture_output=True, text=True, timeout=START_S + 60)
        assert alive.returncode == 0, alive.stderr[-2000:]
        yield Cluster(address, env, int(alive.stdout.split()[-1]))
    finally:
        stop(nodes, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ctl_embed(cluster: Cluster, manifest: Path, ckpt: Path, out: Path, cwd: Path, env: dict):
    cmd = [CTL, "embed-catalog", "--manifest", str(manifest), "--checkpoint", str(ckpt), "--out", str(out),
           "--engine", "ray", "--address", cluster.address, "--workers", "2", "--shard-size", "10",
           "--batch-size", "4", "--device", "cpu", "--image-size", str(SIZE), "--quiet"]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=JOB_S)


def test_the_ray_engine_joins_a_two_node_cluster_by_address_and_embeds_like_the_local_engine(tmp_path, ckpt,
                                                                                              cluster):
    assert cluster.nodes == 2
    manifest = make_catalog(tmp_path / "cat", 24)
    local, distributed = tmp_path / "local", tmp_path / "ray"
    run(manifest, ckpt, local)
    result = ctl_embed(cluster, manifest, ckpt, distributed, tmp_path / "elsewhere", cluster.env)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = read_shards(local), read_shards(distributed)
    assert b.column("product_id").to_pylist() == a.column("product_id").to_pylist() == [f"p{i:04d}" for i in range(24)]
    np.testing.assert_allclose(embeddings_of(b), embeddings_of(a), atol=1e-5)


def test_joining_without_token_mode_is_one_line_that_names_the_fix(tmp_path, ckpt, cluster):
    manifest = make_catalog(tmp_path / "cat", 2)
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    result = ctl_embed(cluster, manifest, ckpt, tmp_path / "out", tmp_path / "elsewhere", env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ctl embed-catalog: error: cannot join the Ray cluster at {cluster.address}: "), last
    assert "set RAY_AUTH_MODE=token" in last
