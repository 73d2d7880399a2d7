"""Fine-tune mode on a micro sample (CPU): epoch-seeded image triplets, end-to-end training, exact resume."""
import json

import pytest
import torch

from jobs.data.sample import generate
from jobs.evaluation.evaluate import run_evaluation
from jobs.training.finetune import TripletImages
from jobs.training.run_layout import STATE_FILE
from jobs.training.train import train
from jobs.training.training_data import Readable, cache_features, prepare_data, trainable_pairs, usable_queries
from pipeline.backbones import build_backbone
from pipeline.checkpoint import load_checkpoint
from tests.jobs.training.tiny_run import CFG

# A backbone step on 2 shared CPU cores takes ~1 s per image (forward and backward): a micro sample
# (18 training pairs) and one negative keep these epochs to seconds.
FT = CFG.replace(mode="finetune", epochs=2, batch_size=4, negatives=1, val_queries=8)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    generate(root, seed=3, scenes=8, products=30, categories=3, image_size=64, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def finetuned(micro, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune")
    return out, train(micro, out, config=FT, progress=False)


def test_triplet_images_are_seeded_per_epoch_with_the_positive_first(micro, tmp_path):
    data = prepare_data(micro, tmp_path, FT)
    pools = {j: data.negatives_pool[j] for j in data.train_pairs[:3]}
    index = {c: i for i, c in enumerate(data.dataset.categories())}
    epoch0 = TripletImages(data, pools, FT, index, epoch=0, size=64)
    scene, products, cat = epoch0[1]
    assert len(epoch0) == 3 and scene.shape == (3, 64, 64) and products.shape == (1 + FT.negatives, 3, 64, 64)
    positive = data.dataset.pairs[list(pools)[1]].product_id
    assert cat == index[data.dataset.products[positive].category]
    again = TripletImages(data, pools, FT, index, epoch=0, size=64)[1]
    assert torch.equal(again[0], scene) and torch.equal(again[1], products)
    later = TripletImages(data, pools, FT, index, epoch=1, size=64)[1]
    assert not torch.equal(later[1], products)          # a new epoch, new augmented views


def test_finetune_trains_the_backbone_end_to_end_and_evaluates(finetuned, micro):
    out, summary = finetuned
    assert summary.best_epoch in (1, 2) and summary.triplets_per_second > 0
    assert json.loads((out / "config.json").read_text())["mode"] == "finetune"
    tuned = load_checkpoint(out / "checkpoint.pt").embedder.backbone.state_dict()
    start = build_backbone(name=FT.backbone, weights=FT.backbone_weights).state_dict()
    changed = [k for k, v in start.items() if v.is_floating_point() and not torch.equal(v, tuned[k])]
    assert changed, "fine-tuning left every backbone weight as it was"
    report = run_evaluation(out, plots=False, device="cpu")
    assert set(report["methods"]) == {"hybrid", "paper", "global", "local", "backbone"}
    # Training read which images decode without the cache; evaluation computed the cache: the same filter.
    data = prepare_data(micro, out, FT)
    cache_features(data, out, FT, "cpu")
    readable = Readable.from_features(data.scenes, data.products)
    assert summary.n_train_pairs == len(trainable_pairs(data, readable))
    assert summary.n_val_queries == len(usable_queries(data, data.val_pairs, FT.seed, readable)[:FT.val_queries])


def test_finetune_one_epoch_then_resume_to_two_equals_two_straight_epochs(finetuned, micro, tmp_path):
    out, straight = finetuned
    train(micro, tmp_path, config=FT.replace(epochs=1), progress=False)
    resumed = train(micro, tmp_path, config=FT, resume=True, progress=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert resumed.history == straight.history and resumed.best_epoch == straight.best_epoch
    final = torch.load(tmp_path / STATE_FILE, weights_only=False)["model"]
    reference = torch.load(out / STATE_FILE, weights_only=False)["model"]
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference), "resumed weights differ"
    kept = load_checkpoint(tmp_path / "checkpoint.pt").embedder.state_dict()
    assert all(torch.equal(v, load_checkpoint(out / "checkpoint.pt").embedder.state_dict()[k]) for k, v in kept.items())
