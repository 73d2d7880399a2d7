"""IndexInfo (info.json's schema): round trips, files written before it still load, unknown keys survive."""
from __future__ import annotations

import json

import pytest

from index.layout import INFO_FILE, IndexDirError, IndexInfo, MemoryReport, RecallReport, UpdateReport, read_info

# An info.json as the builds before the schema wrote it (abridged: every section kind is present).
OLD_INFO = {
    "format_version": 1, "checkpoint_sha256": "a" * 64, "backbone": "efficientnet-lite0", "dim": 16,
    "metric": "inner_product", "factory": "IVF32,Flat", "index_kind": "ivf", "search_params": {"nprobe": 4},
    "category_search_params": None, "rerank": False, "n": 1500, "counts_per_category": {"bag": 700, "shoe": 800},
    "extra_columns": [], "build_seconds": 1.5,
    "recall": {"k": 20, "value": 0.99, "target": 0.98, "target_met": True, "queries": 1000, "query_noise": 0.5,
               "method": "perturbed", "tuning_recall": 0.99, "tuning_trials": [[{"nprobe": 4}, 0.99]]},
    "category_recall": None, "latency_ms": {"single_query_median": 0.1, "batch_per_query": 0.01, "threads": 2},
    "memory": {"budget_bytes": 4 * 10**9, "estimated_index_bytes": 10, "index_file_bytes": 20, "ivfdata_bytes": 0,
               "embeddings_f16_bytes": 30},
    "ondisk": False, "phases": {"groups": 1}, "parallel": None, "ivf": {"nlist": 32, "imbalance": 1.1,
                                                                      "centroid_score": 0.8},
    "source": {"embeddings_dir": "emb", "catalog_fingerprint": "f"}, "selection_reason": "forced",
    "intent": "forced", "seed": 0, "embeddings_dir": "emb", "faiss_version": "1.15.1",
    "created_at": "2026-12-01T00:00:00+00:00", "files": ["index.faiss"], "version": "v000001",
    "update": {"from_version": "v000000", "upserted": 3, "dropped": 1, "removals_not_found": 0, "seconds": 0.2,
               "n_at_build": 1498, "churn_since_build": 0.002, "rebuild_due": False, "rebuild_reasons": []},
}


def test_an_info_json_written_before_the_schema_loads_field_for_field():
    info = IndexInfo.from_json(json.dumps(OLD_INFO))
    assert info.n == 1500 and info.dim == 16 and info.factory == "IVF32,Flat" and info.search_params == {"nprobe": 4}
    assert info.recall == RecallReport(k=20, value=0.99, target=0.98, target_met=True, queries=1000, query_noise=0.5,
                                       method="perturbed", tuning_recall=0.99, tuning_trials=[[{"nprobe": 4}, 0.99]])
    assert info.memory.budget_bytes == 4 * 10**9 and info.ivf.nlist == 32 and info.source.catalog_fingerprint == "f"
    assert info.update.upserted == 3 and info.update.n_at_build == 1498 and info.category_recall is None
    # written back, the file says the same (None-valued keys are left out)
    assert json.loads(info.to_json()) == {k: v for k, v in OLD_INFO.items() if v is not None}


def test_the_earliest_files_without_format_version_or_sections_load_with_defaults():
    info = IndexInfo.from_dict({"n": 7, "dim": 4, "recall": None})
    assert (info.format_version, info.n, info.dim, info.ondisk, info.update) == (1, 7, 4, False, None)
    assert info.recall == RecallReport() and info.recall.k == 20 and info.memory == MemoryReport()


def test_keys_it_does_not_know_survive_a_round_trip_at_every_level():
    data = {**OLD_INFO, "future_field": {"x": 1}, "recall": {**OLD_INFO["recall"], "future_metric": 0.5}}
    info = IndexInfo.from_dict(data)
    assert info.extra == {"future_field": {"x": 1}} and info.recall.extra == {"future_metric": 0.5}
    assert json.loads(info.to_json())["recall"]["future_metric"] == 0.5
    assert json.loads(info.to_json())["future_field"] == {"x": 1}


def test_replace_makes_a_new_frozen_info():
    info = IndexInfo.from_dict(OLD_INFO)
    newer = info.replace(n=10, update=UpdateReport(upserted=1))
    assert (info.n, newer.n, newer.update.upserted, newer.factory) == (1500, 10, 1, "IVF32,Flat")
    with pytest.raises(AttributeError):
        info.n = 3


def test_write_then_read_info_through_the_pointer(tmp_path):
    build = tmp_path / "v000001"
    build.mkdir()
    IndexInfo.from_dict(OLD_INFO).write(build)
    (tmp_path / "CURRENT").write_text("v000001\n")
    assert read_info(tmp_path) == IndexInfo.from_dict(OLD_INFO)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_broken_info_json_is_one_line_naming_the_file(tmp_path, text):
    (tmp_path / INFO_FILE).write_text(text)
    with pytest.raises(IndexDirError, match="info.json"):
        IndexInfo.read(tmp_path)
