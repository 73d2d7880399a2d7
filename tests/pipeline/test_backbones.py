"""Backbones give the promised feature maps; EfficientNet-Lite0's real ImageNet weights load offline."""
import pytest
import torch

from pipeline.backbones import BackboneWeightsError, build_backbone, pooled, traced_backbone
from pipeline.images import image_to_tensor


@pytest.fixture(scope="module")
def lite0():
    return build_backbone(name="efficientnet-lite0").eval()


def test_efficientnet_lite0_gives_1280_channels_on_a_7x7_grid(lite0):
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        fmap = lite0(x)
    assert fmap.shape == (2, 1280, 7, 7)
    assert pooled(fmap).shape == (2, 1280)


def test_resnet50_random_weights_give_2048_channels():
    net = build_backbone(name="resnet50", weights="random").eval()
    with torch.inference_mode():
        fmap = net(torch.rand(1, 3, 64, 64))
    assert fmap.shape == (1, 2048, 2, 2)  # 64 px / 32 stride; 224 px gives 7x7


def test_resnet50_without_reachable_weights_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the weights must be downloaded
    import torchvision.models._api as weights_api

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneWeightsError, match="resnet50 ImageNet weights"):
        build_backbone(name="resnet50", weights="imagenet")


def test_missing_local_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        build_backbone(name="resnet50", weights=str(tmp_path / "nope.pth"))


def test_unknown_backbone_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone(name="vgg16")


def test_lite0_preprocessing_is_its_own_not_imagenet_mean_std(lite0):
    x = torch.full((1, 3, 2, 2), 127, dtype=torch.uint8)
    assert torch.allclose(lite0.normalize(x), torch.zeros(1, 3, 2, 2), atol=1e-6)


def test_lite0_recognises_a_real_photo_offline(lite0):
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    cat = Image.fromarray(skdata.chelsea())
    x = image_to_tensor(cat, 224).unsqueeze(0)
    with torch.inference_mode():
        logits = lite0.trunk.model._fc(pooled(lite0(x)))
    probs = torch.softmax(logits, -1)[0]
    top = int(probs.argmax())
    # ImageNet classes 281-285 are domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian cat)
    assert 281 <= top <= 285, f"top class {top}"
    assert float(probs[281:286].sum()) > 0.5


def test_the_multi_scale_backbone_is_the_last_map_plus_earlier_stages_pooled_onto_its_grid(lite0):
    from pipeline.backbones import MULTI_SCALE_BLOCKS, MULTI_SCALE_TAP_SCALE

    multi = build_backbone(name="efficientnet-lite0-ms").eval()
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        fmap = multi(x)
        assert fmap.shape == (2, multi.channels, 7, 7) and multi.channels == 1280 + 40 + 112
        assert torch.allclose(fmap[:, :1280], lite0(x), atol=1e-5)     # the same weights, the same last map
        m, h = lite0.trunk.model, lite0.normalize(x)                    # the taps, by the package's own blocks
        h = m._swish(m._bn0(m._conv_stem(h)))
        taps = []
        for idx, block in enumerate(m._blocks):
            h = block(h)
            if idx in MULTI_SCALE_BLOCKS:
                taps.append(h)
        start = 1280
        for tap in taps:
            size = tap.shape[1]
            stride = tap.shape[-1] // 7
            expected = MULTI_SCALE_TAP_SCALE * tap.unfold(2, stride, stride).unfold(3, stride, stride).mean((-1, -2))
            assert torch.allclose(fmap[:, start:start + size], expected, atol=1e-4)
            start += size


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite0-ms"])
def test_the_traced_graph_computes_the_eager_forward_at_any_batch_size(name):
    backbone = build_backbone(name=name, weights="imagenet").eval()
    graph = traced_backbone(backbone, size=64, device="cpu")     # traced at batch 1
    g = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        x = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8, generator=g)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            eager, traced = backbone(x), graph(x)
        assert traced.shape == eager.shape and eager.abs().max() > 0.1   # real weights: a map worth comparing
        torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-4)
