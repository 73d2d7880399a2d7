"""embed-catalog --engine ray (a local Ray instance, 2 CPUs): the local engine's shards, rejects and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from index.embedding_shards import MANIFEST
from jobs.catalog.ray_engine import ProductEmbedder
from tests.jobs.catalog.catalogs import (
    ROOT,
    SIZE,
    assert_one_line_error,
    embeddings_of,
    kill_after_first_shard,
    make_bad_catalog,
    make_catalog,
    read_shards,
    run,
)

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install '.[ray]')")
# a Ray pipeline that waits for resources fails instead of hanging
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (start-up is seconds); the engine uses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}})
    yield
    ray.shutdown()


def _same_shards(a, b, n_shards):
    for k in range(n_shards):
        ta, tb = (pq.read_table(d / f"part-{k:05d}.parquet") for d in (a, b))
        assert ta.column("product_id").to_pylist() == tb.column("product_id").to_pylist()
        assert ta.drop_columns(["embedding"]).equals(tb.drop_columns(["embedding"]))
        np.testing.assert_allclose(embeddings_of(ta), embeddings_of(tb), atol=1e-5)


def test_ray_shards_equal_local_shards(tmp_path, ckpt, local_ray):
    manifest = make_catalog(tmp_path / "cat", 23)
    local, distributed = tmp_path / "local", tmp_path / "ray"
    run(manifest, ckpt, local)
    summary = run(manifest, ckpt, distributed, engine="ray", workers=1)
    assert (summary["embedded"], summary["rejected"], summary["shards"], summary["engine"]) == (23, 0, 3, "ray")
    _same_shards(local, distributed, 3)
    a, b = (json.loads((d / MANIFEST).read_text()) for d in (local, distributed))
    assert a["shards"] == b["shards"] and b["complete"] and b["engine"] == "ray"
    assert run(manifest, ckpt, distributed, engine="ray", workers=1)["noop"]


def test_ray_actors_trace_their_own_backbone_when_asked(tmp_path, ckpt, local_ray):
    manifest = make_catalog(tmp_path / "cat", 7)
    local, distributed = tmp_path / "local", tmp_path / "ray"
    run(manifest, ckpt, local, trace=False)
    summary = run(manifest, ckpt, distributed, engine="ray", workers=1, trace=True)
    assert summary["graph"] == "traced" and summary["trace_seconds"] is None   # traced inside the actors
    np.testing.assert_allclose(embeddings_of(read_shards(distributed)), embeddings_of(read_shards(local)), atol=1e-4)
    actor = ProductEmbedder(Path(ckpt).read_bytes(), gpus=0, threads=1, trace=True, size=SIZE)
    assert isinstance(actor.backbone, torch.jit.ScriptModule)
    assert ProductEmbedder(Path(ckpt).read_bytes(), gpus=0, threads=1).backbone is None


def test_corrupt_images_are_rejected_rows_with_reasons(tmp_path, ckpt, local_ray):
    manifest, reasons = make_bad_catalog(tmp_path / "cat")
    local, distributed = tmp_path / "local", tmp_path / "ray"
    run(manifest, ckpt, local, shard_size=5)
    summary = run(manifest, ckpt, distributed, shard_size=5, engine="ray", workers=2, batch_size=3)
    assert (summary["embedded"], summary["rejected"]) == (7, 6)
    assert (local / "rejects.jsonl").read_text() == (distributed / "rejects.jsonl").read_text()
    rejects = [json.loads(line) for line in (distributed / "rejects.jsonl").read_text().splitlines()]
    assert [r["product_id"] for r in rejects] == list(reasons)
    _same_shards(local, distributed, 3)


@pytest.mark.slow   # starts a second Ray instance in a subprocess: 224 s at load average 9 on 2 cores
def test_killed_ray_run_resumes_to_the_clean_result(tmp_path, ckpt, local_ray):
    manifest = make_catalog(tmp_path / "cat", 160, seed=1)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    run(manifest, ckpt, clean, shard_size=20)
    cmd = [sys.executable, "-m", "jobs.catalog.embed_catalog", "--manifest", str(manifest), "--checkpoint", str(ckpt),
           "--out", str(resumed), "--shard-size", "20", "--batch-size", "4", "--device", "cpu",
           "--image-size", str(SIZE), "--engine", "ray", "--workers", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    # its own session: the kill takes the driver and the local Ray instance it started, nothing else
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    kill_after_first_shard(proc, resumed, lambda: os.killpg(proc.pid, signal.SIGKILL), within=240)
    proc.stderr.close()
    before = json.loads((resumed / MANIFEST).read_text())
    assert not before["complete"] and 1 <= len(before["shards"]) < 8
    kept = {s["name"]: (resumed / s["name"]).stat().st_mtime_ns for s in before["shards"]}

    summary = run(manifest, ckpt, resumed, shard_size=20, engine="ray", workers=1)
    assert summary["resumed_shards"] == len(kept) and summary["processed"] == 160 - 20 * len(kept)
    assert {n: (resumed / n).stat().st_mtime_ns for n in kept} == kept
    _same_shards(clean, resumed, 8)
    assert read_shards(resumed).column("product_id").to_pylist() == [f"p{i:04d}" for i in range(160)]
    assert not [p for p in resumed.rglob("*") if p.name.endswith(".tmp")]


def test_ray_flags_need_the_ray_engine(tmp_path, ckpt):
    from click.testing import CliRunner

    from jobs.catalog.embed_catalog import embed_catalog_command
    manifest = make_catalog(tmp_path / "cat", 3)
    args = ["--manifest", str(manifest), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--quiet"]
    assert_one_line_error(CliRunner().invoke(embed_catalog_command, [*args, "--num-gpus-per-worker", "1"]),
                          "--engine ray")
    assert_one_line_error(CliRunner().invoke(embed_catalog_command, [*args, "--engine", "ray", "--workers", "0"]),
                          "--workers must be at least 1")
