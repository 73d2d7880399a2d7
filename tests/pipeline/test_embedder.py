"""The style embedder: shapes, unit norms, heads-only mode, frozen backbone, category names."""
import pytest
import torch

from pipeline.embedder import PresenceHead, build_embedder

CATS = ["A|Shoes", "A|Bags", "A|Hats"]


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return build_embedder(categories=CATS, backbone_weights="random", dim=16, hidden=32).eval()


def test_outputs_are_unit_vectors_of_the_promised_shapes(embedder):
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        f_s, f_i = embedder.encode_scenes(x)
        f_p = embedder.encode_products(x)
        e_c = embedder.category_embeddings(torch.tensor([0, 2]))
    assert f_s.shape == (2, 16) and f_i.shape == (2, 49, 16) and f_p.shape == (2, 16) and e_c.shape == (2, 16)
    for t in (f_s, f_i, f_p, e_c):
        assert torch.allclose(t.norm(dim=-1), torch.ones(t.shape[:-1]), atol=1e-5)


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval_mode(embedder):
    assert all(not p.requires_grad for p in embedder.backbone.parameters())
    embedder.train()
    assert not embedder.backbone.training and embedder.scene_global.training
    embedder.eval()


def test_heads_only_embedder_refuses_images_but_takes_features():
    heads = build_embedder(categories=CATS, with_backbone=False, dim=8, hidden=16)
    assert heads.product_from_features(torch.randn(3, 1280)).shape == (3, 8)
    with pytest.raises(RuntimeError, match="without a backbone"):
        heads.encode_products(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1280"):
        heads.scene_from_features(torch.randn(1, 512, 7, 7))


def test_unknown_category_names_the_known_ones(embedder):
    with pytest.raises(ValueError, match="A\\|Shoes"):
        embedder.category_indices(["A|Socks"])


def test_presence_head_is_optional_and_gives_one_probability_per_category():
    heads = build_embedder(categories=CATS, with_backbone=False, dim=8, hidden=0)
    maps = torch.randn(2, 1280, 7, 7)
    assert heads.presence is None and heads.presence_probabilities(maps) is None
    assert not any(k.startswith("presence.") for k in heads.heads_state_dict())
    before = torch.get_rng_state()
    head = PresenceHead(1280, len(CATS))
    assert torch.equal(torch.get_rng_state(), before)            # no draw from the global stream
    head.bias.data = torch.tensor([-20.0, 0.0, 20.0])
    heads.attach_presence(head)
    probs = heads.presence_probabilities(maps)
    assert probs.shape == (2, 3) and torch.allclose(probs, torch.tensor([[0.0, 0.5, 1.0]] * 2), atol=1e-6)
    assert torch.equal(heads.presence_probabilities(maps.mean((2, 3))), probs)   # pooled features too
    assert {"presence.weight", "presence.bias", "presence.mean", "presence.scale"} <= set(heads.heads_state_dict())
    with pytest.raises(ValueError, match="presence head must be 3 x 1280"):
        heads.attach_presence(PresenceHead(512, 3))
