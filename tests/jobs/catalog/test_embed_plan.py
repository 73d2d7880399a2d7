"""embed-catalog's plan: start, overwrite, resume, nothing to do or refuse, decided from the manifests alone."""
import dataclasses

import pytest

from index.embedding_shards import EmbeddingsManifest, ShardEntry
from jobs.catalog.embed_catalog import ACTIONS, plan_run, refusal

WANTED = EmbeddingsManifest(checkpoint_sha256="a" * 64, catalog="/c/catalog.parquet", catalog_fingerprint="f1",
                            n_input=25, shard_size=10, n_shards=3, image_size=None)
SHARDS = [ShardEntry(f"part-{k:05d}.parquet", k, 10 if k < 2 else 5) for k in range(3)]
ALL = frozenset(s.name for s in SHARDS)


def written(**changes) -> EmbeddingsManifest:
    return dataclasses.replace(WANTED, **{"image_size": 32, "shards": list(SHARDS), "complete": True, **changes})


def plan(old, new=WANTED, *, overwrite=False, holds=True, present=ALL):
    chosen = plan_run(old, new, overwrite=overwrite, holds_output=holds, present=present)
    assert chosen.action in ACTIONS and chosen.reason
    return chosen


def test_an_empty_folder_starts_and_overwrite_always_starts_over():
    assert plan(None, holds=False, present=frozenset()).action == "start"
    assert plan(written(checkpoint_sha256="b" * 64), overwrite=True).action == "overwrite"


def test_shards_without_a_manifest_are_refused():
    chosen = plan(None, holds=True)
    assert chosen.action == "refuse" and "without a _manifest.json" in chosen.reason


def test_a_complete_folder_is_nothing_to_do_and_a_missing_shard_is_resumed():
    assert plan(written()).action == "noop"
    chosen = plan(written(), present=ALL - {"part-00001.parquet"})
    assert chosen.action == "resume" and [s.index for s in chosen.finished] == [0, 2]
    unfinished = plan(written(complete=False, shards=SHARDS[:1]))
    assert unfinished.action == "resume" and [s.index for s in unfinished.finished] == [0]
    assert "1 of 3" in unfinished.reason


@pytest.mark.parametrize("changes, words", [
    ({"checkpoint_sha256": "b" * 64}, "different checkpoint"),
    ({"catalog_fingerprint": "f2", "n_input": 20}, "made from 20 rows of this catalogue"),
    ({"catalog_fingerprint": "f2", "catalog": "/other.parquet"}, "different catalogue"),
    ({"shard_size": 5}, "--shard-size 5"),
    ({"base_fingerprint": "x"}, "incremental run"),
    ({"jpeg_draft": True}, "with --jpeg-draft"),
])
def test_each_difference_in_what_was_made_is_refused_with_its_reason(changes, words):
    chosen = plan(written(**changes))
    assert chosen.action == "refuse" and words in chosen.reason


def test_the_draft_setting_and_a_known_image_size_must_match_in_both_directions():
    draft = dataclasses.replace(WANTED, jpeg_draft=True)
    assert "without --jpeg-draft" in refusal(written(), draft)
    assert refusal(written(jpeg_draft=True), draft) is None
    assert refusal(written(), dataclasses.replace(WANTED, image_size=32)) is None
    assert "image size 32, this run uses 64" in refusal(written(), dataclasses.replace(WANTED, image_size=64))
