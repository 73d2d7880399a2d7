"""The checkpoint format: a round trip gives the same model, the sha256 names the file, bad files are named as such."""
import json

import pytest
import torch

from common.files import sha256_of
from pipeline.checkpoint import (
    FORMAT,
    CheckpointError,
    check_checkpoint,
    has_presence_head,
    load_checkpoint,
    save_checkpoint,
)
from pipeline.embedder import PresenceHead, build_embedder

CATS = ["A|Shoes", "A|Bags", "A|Hats"]


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return build_embedder(categories=CATS, backbone_weights="random", dim=16, hidden=32).eval()


def test_round_trip_gives_identical_embeddings_and_records_sha256(embedder, tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    sha = save_checkpoint(path, embedder, config={"dim": 16, "note": "x"}, extra={"epoch": 3})
    assert sha == sha256_of(path) == check_checkpoint(path)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"dim": 16, "note": "x"}
    loaded = load_checkpoint(path)
    assert loaded.sha256 == sha and loaded.embedder.categories == CATS and loaded.extra == {"epoch": 3}
    x = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.allclose(loaded.embedder.encode_products(x), embedder.encode_products(x), atol=1e-6)
        assert torch.allclose(loaded.embedder.encode_scenes(x)[1], embedder.encode_scenes(x)[1], atol=1e-6)
    assert not list(path.parent.glob(".*tmp"))


def test_the_same_model_saved_twice_has_the_same_sha256(embedder, tmp_path):
    """The sha256 ties indexes and calibrations to a checkpoint: a re-save of the same weights must keep it."""
    first = save_checkpoint(tmp_path / "a" / "checkpoint.pt", embedder, config={"dim": 16}, extra={"epoch": 1})
    second = save_checkpoint(tmp_path / "b" / "model.pt", embedder, config={"dim": 16}, extra={"epoch": 1})
    third = save_checkpoint(tmp_path / "c" / "model.pt", embedder, config={"dim": 16}, extra={"epoch": 2})
    assert first == second != third


def test_heads_only_load_skips_the_backbone(embedder, tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, embedder, config={})
    heads = load_checkpoint(path, with_backbone=False).embedder
    assert heads.backbone is None
    features = torch.randn(2, 1280)
    with torch.no_grad():
        assert torch.allclose(heads.product_from_features(features), embedder.product_from_features(features))


def test_a_fine_tuned_backbone_travels_inside_the_file(tmp_path):
    torch.manual_seed(1)
    tuned = build_embedder(categories=CATS, backbone_weights="random", dim=8, hidden=0, freeze_backbone=False)
    with torch.no_grad():
        next(tuned.backbone.parameters()).add_(0.5)
    path = tmp_path / "tuned.pt"
    save_checkpoint(path, tuned.eval(), config={})
    loaded = load_checkpoint(path).embedder
    for (name, a), b in zip(tuned.backbone.state_dict().items(), loaded.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a readable checkpoint"),
    (b'{"format": "something else"}', "not a readable checkpoint"),
    (None, f"is not a {FORMAT} checkpoint"),
])
def test_bad_files_are_named_as_such_by_both_loaders(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"format": "other/v9", "heads": {}}, path)   # a readable torch file of another kind
    else:
        path.write_bytes(content)
    for load in (load_checkpoint, check_checkpoint):
        with pytest.raises(CheckpointError, match=message):
            load(path)


def test_a_missing_checkpoint_says_how_to_make_one(tmp_path):
    for load in (load_checkpoint, check_checkpoint):
        with pytest.raises(CheckpointError, match="train one first") as missing:
            load(tmp_path / "missing.pt")
        assert missing.value.hint.steps == ["train"]


def test_the_presence_head_travels_and_an_older_checkpoint_loads_without_it_and_says_so(tmp_path):
    heads = build_embedder(categories=CATS, with_backbone=False, dim=8, hidden=0)
    old = tmp_path / "old" / "checkpoint.pt"
    save_checkpoint(old, heads, config={})            # written as before the presence head existed
    loaded = load_checkpoint(old, with_backbone=False)
    assert not loaded.has_presence and loaded.embedder.presence is None and not has_presence_head(old)
    assert len(loaded.notes) == 1 and "no category-presence head" in loaded.notes[0] and "ctl train" in loaded.notes[0]

    head = PresenceHead(1280, len(CATS))
    torch.nn.init.normal_(head.weight, generator=torch.Generator().manual_seed(0))
    head.mean.fill_(0.1)
    heads.attach_presence(head)
    new = tmp_path / "new" / "checkpoint.pt"
    save_checkpoint(new, heads, config={})
    back = load_checkpoint(new, with_backbone=False)
    assert back.has_presence and back.notes == () and has_presence_head(new)
    features = torch.randn(4, 1280)
    with torch.no_grad():
        assert torch.equal(back.embedder.presence_probabilities(features), heads.presence_probabilities(features))
    assert not back.embedder.presence.pools_regions

    regions = PresenceHead(1280, len(CATS), regions=True)     # a region-pooling head keeps its pooling
    regions.load_state_dict({**head.state_dict(), "regions": torch.tensor(1.0)})
    heads.attach_presence(regions)
    save_checkpoint(new, heads, config={})
    back = load_checkpoint(new, with_backbone=False)
    maps = torch.randn(2, 1280, 7, 7)
    with torch.no_grad():
        assert back.embedder.presence.pools_regions
        assert torch.equal(back.embedder.presence_probabilities(maps), heads.presence_probabilities(maps))


def test_a_presence_head_saved_before_region_pooling_loads_as_the_average_head(tmp_path):
    heads = build_embedder(categories=CATS, with_backbone=False, dim=8, hidden=0)
    head = PresenceHead(1280, len(CATS))
    torch.nn.init.normal_(head.weight, generator=torch.Generator().manual_seed(1))
    heads.attach_presence(head)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, heads, config={})
    payload = torch.load(path, weights_only=False)
    del payload["heads"]["presence.regions"]                 # as written before the buffer existed
    torch.save(payload, path)
    back = load_checkpoint(path, with_backbone=False)
    maps = torch.randn(2, 1280, 7, 7)
    with torch.no_grad():
        assert not back.embedder.presence.pools_regions
        assert torch.allclose(back.embedder.presence_probabilities(maps), head(maps.mean((2, 3))).sigmoid())
