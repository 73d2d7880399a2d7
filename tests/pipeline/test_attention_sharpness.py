"""The learnt attention sharpness: the paper's attention at 0, s times sharper at s, old checkpoints unchanged."""
import math

import torch

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.distances import attention_weights, local_distance
from pipeline.embedder import SHARPNESS_GAIN, build_embedder

CATS = ["A|Shoes", "A|Bags", "A|Hats"]


def _heads(learn: bool = False):
    torch.manual_seed(0)
    return build_embedder(categories=CATS, with_backbone=False, dim=8, hidden=0, learn_sharpness=learn).eval()


def _regions(b: int = 2, r: int = 49, d: int = 8) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(b, r, d, generator=torch.Generator().manual_seed(1)), dim=-1)


def test_at_zero_the_category_embedding_is_the_unit_vector_of_the_paper():
    heads = _heads()
    idx = torch.tensor([0, 1, 2])
    assert torch.equal(heads.attention_log_sharpness, torch.zeros(3))
    expected = torch.nn.functional.normalize(heads.category(idx), dim=-1)
    assert torch.equal(heads.category_embeddings(idx), expected)
    assert heads.attention_sharpness_by_name() == dict.fromkeys(CATS, 1.0)


def test_a_sharpness_s_gives_the_softmax_of_s_times_the_papers_logits():
    heads = _heads()
    s = torch.tensor([1.0, 3.0, 7.5])
    heads.attention_log_sharpness.data = torch.log(s) / SHARPNESS_GAIN
    f_i = _regions()
    cats = torch.tensor([[1, 2], [0, 2]])
    e_c = heads.category_embeddings(cats)                        # 2 x 2 x d, norms s
    assert torch.allclose(e_c.norm(dim=-1), s[cats], atol=1e-5)
    unit = torch.nn.functional.normalize(heads.category(cats), dim=-1)
    for b in range(2):                                           # the oracle: an explicit loop over regions
        for m in range(2):
            logits = torch.stack([-s[cats[b, m]] * ((f_i[b, r] - unit[b, m]) ** 2).sum() for r in range(49)])
            assert torch.allclose(attention_weights(f_i, e_c)[b, m], torch.softmax(logits, 0), atol=1e-6)


def test_sharper_attention_moves_the_local_distance_towards_the_nearest_region():
    heads = _heads()
    f_i = _regions(b=1)
    cats = torch.tensor([[0]])
    f_p = torch.nn.functional.normalize(torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    unit = torch.nn.functional.normalize(heads.category(cats), dim=-1)
    nearest = int(((f_i[0] - unit[0, 0]) ** 2).sum(-1).argmin())
    heads.attention_log_sharpness.data[0] = math.log(200.0) / SHARPNESS_GAIN
    d_l = local_distance(f_i, f_p, heads.category_embeddings(cats))
    assert torch.allclose(d_l, ((f_i[0, nearest] - f_p[0, 0]) ** 2).sum().reshape(1, 1), atol=1e-3)


def test_only_a_model_asked_to_learn_it_changes_its_sharpness():
    for learn in (False, True):
        heads = _heads(learn).train()
        opt = torch.optim.AdamW(heads.parameters(), lr=1e-2)
        f_i = _regions()
        e_c = heads.category_embeddings(torch.tensor([[0, 1], [2, 2]]))
        f_p = torch.nn.functional.normalize(torch.randn(2, 2, 8), dim=-1)
        local_distance(f_i, f_p, e_c).sum().backward()
        opt.step()
        changed = not torch.equal(heads.attention_log_sharpness.detach(), torch.zeros(3))
        assert changed is learn


def test_the_sharpness_travels_in_the_checkpoint_and_an_older_one_loads_at_the_papers(tmp_path):
    heads = _heads(learn=True)
    heads.attention_log_sharpness.data = torch.tensor([0.0, 0.1, 0.2])
    save_checkpoint(tmp_path / "new.pt", heads, config={})
    loaded = load_checkpoint(tmp_path / "new.pt", with_backbone=False).embedder
    assert torch.equal(loaded.attention_log_sharpness, heads.attention_log_sharpness.detach())
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    payload["heads"].pop("attention_log_sharpness")               # as written before the sharpness existed
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt", with_backbone=False).embedder
    assert loaded.attention_sharpness_by_name() == dict.fromkeys(CATS, 1.0)
